"""The names of the files in a trainer's output folder, in one place: the trainer writes them,
the job manager, the CLI and the UI read them. No torch here, so readers stay light.

    metrics.jsonl, validation.jsonl     one JSON object per step (steplog.py)
    scoreboard.jsonl                    the sample edits' scores per step (scoreboard.py)
    train.log                           the trainer's own log (rank 0)
    step-000010.safetensors             a LoRA checkpoint; final.safetensors at the end
    states/step-000010/                 a resume state (state.json marks it complete)
    resume.json                         {"state": "states/step-000010"}: the current one,
                                        replaced atomically, so some state is always valid
    error.json                          the trainer's own fatal error, written as it dies
    progress.json                       {"phase": "encode", "done", "total", "cached"}: how
                                        far the encoding is (cache.EncodingProgress)
    tensorboard/, mlruns/, wandb/       the --report_to tracker's files (trackers.py)

Files are written beside their place and renamed into it (`replacing`), folders are built
under a dot-name (`partial`); what a kill leaves of either, `clean_leftovers` removes.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..paths import replacing  # one writer for every file (the engine writes LoRA files too)

METRICS = "metrics.jsonl"
VALIDATION = "validation.jsonl"
SCOREBOARD = "scoreboard.jsonl"
LOG = "train.log"
FINAL = "final.safetensors"
STATES = "states"
POINTER = "resume.json"
STATE = "state.json"
ERROR = "error.json"
PROGRESS = "progress.json"
SAMPLES = "samples"
TENSORBOARD = "tensorboard"  # --report_to tensorboard's event files
MLRUNS = "mlruns"            # --report_to mlflow's file store (W&B writes its own wandb/)
LEGACY_RESUME = "resume"  # the single resume folder of runs made before states/
# ...and, in the order to try, the names its swap used: a kill between the swap's renames left
# the only state in .resume.old (or the new one, complete, in .resume.staging).
LEGACY_NAMES = (LEGACY_RESUME, ".resume.staging", ".resume.old")
# When error.json cannot be written (disk full, unwritable folder), the trainer prints its
# error on stderr behind this prefix; the supervisor's log keeps it.
FATAL_PREFIX = "studio.trainer fatal error: "


def lora_path(output: Path, step: int) -> Path:
    return Path(output) / f"step-{step:06d}.safetensors"


def checkpoint_steps(output: Path) -> dict[int, Path]:
    """The step LoRA files of a run by step."""
    found = {}
    for path in Path(output).glob("step-*.safetensors"):
        try:
            found[int(path.stem.split("-")[1])] = path
        except (IndexError, ValueError):
            continue
    return found


def state_dir(output: Path, step: int) -> Path:
    return Path(output) / STATES / f"step-{step:06d}"


def partial(folder: Path) -> Path:
    """Where a folder is built before it is renamed into place."""
    return folder.with_name(f".{folder.name}.partial")


def complete(folder: Path) -> bool:
    return (folder / STATE).is_file()


def state_step(folder: Path) -> int:
    return int(folder.name.split("-")[1])


def states(output: Path) -> list[Path]:
    """The complete states under states/, oldest first."""
    found = [p for p in (Path(output) / STATES).glob("step-*") if complete(p)]
    return sorted(found, key=state_step)


def current_state(output: Path) -> Path | None:
    """The resume state to continue from: the pointer's, else the newest complete state
    (a kill can land between writing a state and moving the pointer), else a legacy one."""
    output = Path(output)
    try:
        named = output / json.loads((output / POINTER).read_text())["state"]
        if complete(named):
            return named
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = states(output)
    if found:
        return found[-1]
    return next((output / name for name in LEGACY_NAMES if complete(output / name)), None)


def write_json(path: Path, value) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def point_to(output: Path, state: Path) -> None:
    """Make `state` the current resume state, in one atomic step."""
    write_json(Path(output) / POINTER, {"state": state.relative_to(output).as_posix()})


def clean_leftovers(output: Path) -> None:
    """What kills left half-made: temporary files and dot-named folders being built, and the
    last run's error. Only at a start, when nothing else writes here."""
    output = Path(output)
    for tmp in [*output.glob(".*.tmp"), *output.glob("tmp*.tmp")]:  # the latter: older trainers'
        tmp.unlink(missing_ok=True)
    for sub in (STATES, SAMPLES):
        for leftover in (output / sub).glob(".*"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
    (output / ERROR).unlink(missing_ok=True)


def write_error(output: Path, message: str) -> None:
    """Raises OSError when even this cannot be written (see FATAL_PREFIX)."""
    Path(output).mkdir(parents=True, exist_ok=True)
    write_json(Path(output) / ERROR, {"error": message, "time": time.time()})


def read_error(output: Path) -> str | None:
    try:
        return json.loads((Path(output) / ERROR).read_text())["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_progress(output: Path) -> dict | None:
    """The trainer's progress file, or None before it writes one."""
    try:
        return json.loads((Path(output) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def fatal_line(lines: list[str]) -> str | None:
    """The trainer's fallback error line in a log tail, if it printed one."""
    for line in reversed(lines):
        if FATAL_PREFIX in line:
            return line.split(FATAL_PREFIX, 1)[1]
    return None


