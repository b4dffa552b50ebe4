"""What a run's files say, for the monitor and for a failed run's error: the metrics, the
validation loss, the sample edits, the LoRA files and the log. Reads files only."""
from __future__ import annotations

import os
from pathlib import Path

from ..trainer import run_files, steplog, validation
from ..trainer.samples import list_samples
from . import multinode, run_folder

LOG_TAIL = 20
# The trainer's fallback error line may sit above a launcher's long traceback.
FATAL_SEARCH = 400


def tail(path: Path, lines: int = LOG_TAIL) -> list[str]:
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    # tqdm redraws with \r: keep the last state of each line.
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()][-lines:]


def read_metrics(output: Path) -> list[dict]:
    return steplog.read(output / run_files.METRICS)


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, debiased at the start as TensorBoard smooths: the loss of
    one step depends mostly on its random timestep, the trend shows only on average."""
    out, average = [], 0.0
    for n, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** n))
    return out


def failure(folder: Path, code: int | None) -> str:
    """Why a run failed: the trainer's own error first, then the exit status, each node's
    report and the log tail."""
    lines = tail(folder / run_folder.LOG, FATAL_SEARCH)
    cause = run_files.read_error(run_folder.output(folder)) or run_files.fatal_line(lines)
    why = (f"exit status {code}" if code is not None
           else "the process disappeared without an exit status (killed?)")
    return "\n".join([*([cause] if cause else []), why, *multinode.node_report(folder),
                      *lines[-LOG_TAIL:]])


def progress(run: dict) -> dict:
    """Everything a monitor shows of a run: step/total, loss curve, ETA, log tail, samples."""
    folder = Path(run["run_dir"])
    output = run_folder.output(folder)
    metrics = read_metrics(output)
    last = metrics[-1] if metrics else {}
    return {"run": run, "step": last.get("step", 0),
            "total": last.get("total") or run["config"].get("max_steps"),
            "loss": last.get("loss"), "lr": last.get("lr"),
            "samples_per_s": last.get("samples_per_s"), "eta_s": last.get("eta"),
            "peak_mem_gb": last.get("peak_mem_gb"),
            "metrics": metrics, "log": tail(folder / run_folder.LOG),
            "loss_smoothed": smoothed([float(m["loss"]) for m in metrics]),
            "validation": validation.read(output),
            # Sample edits of the validation pairs, latest checkpoint first.
            "samples": list_samples(output),
            "lora_files": sorted(output.glob("*.safetensors"),
                                 key=lambda p: p.stat().st_mtime, reverse=True)}
