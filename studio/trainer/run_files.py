"""The names of the files in a trainer's output folder, in one place: the trainer writes them,
the job manager, the CLI and the UI read them. No torch here, so readers stay light.

    metrics.jsonl, validation.jsonl     one JSON object per step (steplog.py)
    train.log                           the trainer's own log (rank 0)
    step-000010.safetensors             a LoRA checkpoint; final.safetensors at the end
    states/step-000010/                 a resume state (state.json marks it complete)
    resume.json                         {"state": "states/step-000010"}: the current one,
                                        replaced atomically, so some state is always valid
    error.json                          the trainer's own fatal error, written as it dies
"""
from __future__ import annotations

import json
import os
from pathlib import Path

METRICS = "metrics.jsonl"
VALIDATION = "validation.jsonl"
LOG = "train.log"
FINAL = "final.safetensors"
STATES = "states"
POINTER = "resume.json"
STATE = "state.json"
ERROR = "error.json"
LEGACY_RESUME = "resume"  # the single resume folder of runs made before states/
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


def _complete(folder: Path) -> bool:
    return (folder / STATE).is_file()


def current_state(output: Path) -> Path | None:
    """The resume state to continue from: the pointer's, else the newest complete state
    (a kill can land between writing a state and moving the pointer), else a legacy one."""
    output = Path(output)
    try:
        named = output / json.loads((output / POINTER).read_text())["state"]
        if _complete(named):
            return named
    except (OSError, ValueError, KeyError, TypeError):
        pass
    states = sorted((p for p in (output / STATES).glob("step-*") if _complete(p)), reverse=True) \
        if (output / STATES).is_dir() else []
    if states:
        return states[0]
    legacy = output / LEGACY_RESUME
    return legacy if _complete(legacy) else None


def read_error(output: Path) -> str | None:
    try:
        return json.loads((Path(output) / ERROR).read_text())["error"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fatal_line(lines: list[str]) -> str | None:
    """The trainer's fallback error line in a log tail, if it printed one."""
    for line in reversed(lines):
        if FATAL_PREFIX in line:
            return line.split(FATAL_PREFIX, 1)[1]
    return None


def file_mode() -> int:
    """The mode an ordinary new file gets under the current umask (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
