"""--report_to: the run's metrics and sample edits in an experiment tracker, through
accelerate's tracker classes, on rank 0 only (dist.is_main: accelerate's own idea of the main
process is wrong under ZeRO-2 on CPU). metrics.jsonl and validation.jsonl stay the studio's
record; a tracker only mirrors them.

    tensorboard   event files in <output>/tensorboard/ (no account, no network)
    wandb         offline (WANDB_MODE=offline, files in <output>/wandb/) unless WANDB_API_KEY
                  or WANDB_MODE is set; `wandb sync` uploads them later
    mlflow        a file store at <output>/mlruns unless MLFLOW_TRACKING_URI is set
    trackio       trackio's local store
"""
from __future__ import annotations

import atexit
import json
import logging
import os
from pathlib import Path

from . import dist, run_files, samples
from .tracker_names import tracker_problem

log = logging.getLogger("studio.trainer")
PROJECT = "qwen-image-edit-studio"  # the W&B / MLflow / trackio project of every run
# metrics.jsonl's names -> the tracker's.
METRIC_NAMES = {"loss": "train/loss", "lr": "train/lr", "samples_per_s": "train/samples_per_s",
                "peak_mem_gb": "train/peak_mem_gb", "epoch": "train/epoch"}
VALIDATION_LOSS = "validation/loss"


class TrackerError(RuntimeError):
    pass


def _config(args) -> dict:
    """The run's flags as hyperparameters (the simple-typed ones that every tracker takes)."""
    return {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (bool, int, float, str))}


def _make(name: str, output: Path):
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    run = f"{output.parent.name}-{output.name}"
    if name == "tensorboard":
        return LOGGER_TYPE_TO_CLASS[name](run_files.TENSORBOARD, str(output))
    if name == "wandb":
        if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
            os.environ["WANDB_MODE"] = "offline"
        return LOGGER_TYPE_TO_CLASS[name](PROJECT, name=run, dir=str(output))
    if name == "mlflow":
        if "MLFLOW_TRACKING_URI" not in os.environ:  # a local file store, no server
            os.environ["MLFLOW_TRACKING_URI"] = (output / run_files.MLRUNS).as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
        return LOGGER_TYPE_TO_CLASS[name](experiment_name=PROJECT, run_name=run)
    return LOGGER_TYPE_TO_CLASS[name](PROJECT, name=run)


class Tracker:
    """Rank 0's tracker; every method does nothing on other ranks and with --report_to none."""

    def __init__(self, name: str, output: Path, args):
        self.name, self.output, self.tracker = name, Path(output), None
        if name == "none" or not dist.is_main():
            return
        if (problem := tracker_problem(name)):
            raise TrackerError(problem)
        try:
            self.tracker = _make(name, self.output)
            self.tracker.start()
            self.tracker.store_init_configuration(_config(args))
        except Exception as exc:  # noqa: BLE001 - a login, a server, a store: the library says
            hint = {"wandb": " (without WANDB_API_KEY and WANDB_MODE it logs offline)",
                    "mlflow": " (without MLFLOW_TRACKING_URI it logs to a file store in the "
                              "output folder)"}.get(name, "")
            raise TrackerError(f"--report_to {name} could not start: {type(exc).__name__}: "
                               f"{exc}{hint}") from exc
        where = {"tensorboard": f" (event files in {self.output / run_files.TENSORBOARD})",
                 "wandb": f" ({os.environ.get('WANDB_MODE', 'online')})",
                 "mlflow": f" ({os.environ.get('MLFLOW_TRACKING_URI')})"}.get(name, "")
        log.info("reporting to %s%s", name, where)
        atexit.register(self.finish)  # an error's exit too: the tracker's last lines are written

    def step(self, row: dict) -> None:
        """A metrics.jsonl row."""
        if self.tracker:
            self.tracker.log({METRIC_NAMES[k]: v for k, v in row.items() if k in METRIC_NAMES},
                             step=row["step"])

    def validation(self, step: int, value: float) -> None:
        if self.tracker:
            self.tracker.log({VALIDATION_LOSS: value}, step=step)

    def sample_edits(self, step: int) -> None:
        """The step's sample edits as images, one series per validation pair."""
        if not (self.tracker and samples.has(self.output, step)):
            return
        index = json.loads((samples.step_dir(self.output, step) / samples.INDEX).read_text("utf-8"))
        paths = {f"samples/{e['sample_id']}": Path(e["output"]) for e in index["samples"]}
        try:
            self._images(paths, step)
        except Exception as exc:  # noqa: BLE001 - a picture the tracker refuses stops nothing
            log.warning("step %d: %s did not take the sample edits: %s", step, self.name, exc)

    def _images(self, paths: dict[str, Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        if self.name == "mlflow":  # MLflow has no image series: the files as artifacts
            for path in paths.values():
                self.tracker.log_artifact(str(path), artifact_path=f"samples/step-{step:06d}")
        elif self.name == "trackio":
            import trackio

            self.tracker.log({k: trackio.Image(str(p)) for k, p in paths.items()}, step=step)
        else:
            pixels = {k: np.asarray(Image.open(p).convert("RGB"))[None] for k, p in paths.items()}
            extra = {"dataformats": "NHWC"} if self.name == "tensorboard" else {}
            self.tracker.log_images(pixels if extra else {k: list(v) for k, v in pixels.items()},
                                    step=step, **extra)

    def finish(self) -> None:
        if self.tracker:
            self.tracker.finish()
            self.tracker = None
