"""The job manager: training runs as supervised subprocesses, tracked in the store.

Each run has a folder `<project>/runs/<id>/` holding the exported dataset, the accelerate
config, `train.log`, `exit.json` (written by the supervisor) and `output/` (the trainer's
metrics.jsonl, checkpoints and resume state). The store row is the source of truth for the
UI and CLI; `reconcile()` brings it in line with the processes, so a studio restart or a
killed trainer never leaves a run "running" or "stopping" forever.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..runs_store import ACTIVE
from ..store import Store, now
from . import launch
from .accelerate_config import write_config
from .launch import TrainOptions

LOG_TAIL = 20


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; only its parent's wait() is missing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


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
    path = output / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return rows


class JobManager:
    def __init__(self, store: Store, before_start: Callable[[str], None] | None = None):
        """`before_start(device)` runs before a run takes a device (the UI frees its pipeline)."""
        self.store = store
        self.runs = store.runs
        self.before_start = before_start
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.RLock()

    # -- planning -------------------------------------------------------------
    def run_dir(self, project: str, run_id: int) -> Path:
        return self.store.project_dir(project) / "runs" / str(run_id)

    def preview(self, opts: TrainOptions, run_dir: Path | None = None) -> dict:
        """The exact command, environment and accelerate config a run would use."""
        run_dir = run_dir or Path("<run folder>")
        config = launch.accelerate_config(opts)
        command = launch.launch_command(opts, run_dir / "accelerate_config.yaml",
                                        run_dir / "dataset", run_dir / "output")
        env = launch.launch_env(opts)
        return {"command": command, "env": env, "accelerate_config": config,
                "shell": launch.shell_line(command, env)}

    # -- lifecycle ------------------------------------------------------------
    def submit(self, project: str, opts: TrainOptions, name: str | None = None) -> dict:
        """Queue a run (its dataset is exported when it starts) and start it if its devices
        are free."""
        launch.accelerate_config(opts)  # refuse impossible layouts now, not in the queue
        if opts.model == "demo":  # the studio's own demo model, wherever this projects folder is
            from ..engine.models import resolve_model

            opts = TrainOptions.from_dict({**opts.as_dict(),
                                           "model": str(resolve_model("demo", self.store.root))})
        if not self.store.pairs.count(project):
            raise ValueError(f"project {project!r} has no pairs to train on; add some in the Dataset tab")
        from ..dataset.validate import validate_project

        report = validate_project(self.store, project, max_pixels=opts.max_pixels)
        if report.errors:
            bad = [f"pair {p['id']} ({p['sample_id']}): {p['message']}"
                   for p in report.problems if p["level"] == "error"]
            raise ValueError(f"{report.summary()}; fix or delete these pairs before training:\n"
                             + "\n".join(bad[:20]) + ("\n…" if len(bad) > 20 else ""))
        run = self.runs.create(project, name or f"{project}-lora", "", opts.as_dict(),
                               launch.devices_key(opts))
        run = self.runs.update(run["id"], run_dir=str(self.run_dir(project, run["id"])))
        self.dispatch()
        return self.runs.get(run["id"])

    def dispatch(self) -> list[int]:
        """Start queued runs, oldest first, whose devices no active run holds."""
        started = []
        with self._lock:
            busy = {r["devices"] for r in self.runs.list(statuses=ACTIVE)}
            for run in self.runs.list(statuses=("queued",)):
                if run["devices"] in busy:
                    continue
                busy.add(run["devices"])
                self._start(run)
                started.append(run["id"])
        return started

    def _start(self, run: dict) -> None:
        opts = TrainOptions.from_dict(run["config"])
        project = self.runs.project_name(run)
        folder = Path(run["run_dir"])
        resume = (folder / "output" / "resume" / "state.json").is_file()
        try:
            if not (folder / "dataset" / "metadata_edit.csv").is_file():
                from ..dataset.export import export_dataset

                export_dataset(self.store, project, folder / "dataset", overwrite=True)
            config_file = write_config(folder / "accelerate_config.yaml",
                                       launch.accelerate_config(opts))
            command = launch.launch_command(opts, config_file, folder / "dataset",
                                            folder / "output", resume=resume)
            env = {**os.environ, **launch.launch_env(opts)}
            if self.before_start:
                self.before_start(opts.device)
            (folder / "exit.json").unlink(missing_ok=True)
            log = (folder / "train.log").open("ab")
            supervised = [sys.executable, "-m", "studio.trainer.supervise",
                          str(folder / "exit.json"), "--", *command]
            child = subprocess.Popen(supervised, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                     cwd=Path(__file__).resolve().parents[2])
            log.close()
        except Exception as exc:  # noqa: BLE001 - any failure to start is the run's failure
            self.runs.update(run["id"], status="failed", error=f"could not start: {exc}",
                             ended_at=now())
            return
        self._children[child.pid] = child
        self.runs.update(run["id"], status="running", pid=child.pid, started_at=now(),
                         ended_at=None, exit_code=None, error=None,
                         command=launch.shell_line(command, launch.launch_env(opts)))

    def stop(self, run_id: int) -> dict:
        """Graceful: SIGTERM to the run's process group; the trainer saves a checkpoint."""
        run = self.reconcile_one(self.runs.require(run_id))
        if run["status"] == "queued":
            return self.runs.update(run_id, status="stopped", ended_at=now())
        if run["status"] != "running":
            return run
        self.runs.update(run_id, status="stopping")
        try:
            os.killpg(run["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
        return self.runs.get(run_id)

    def resume(self, run_id: int) -> dict:
        run = self.reconcile_one(self.runs.require(run_id))
        if run["status"] in ("queued", *ACTIVE):
            raise ValueError(f"run {run_id} is {run['status']}; stop it before resuming")
        self.runs.update(run_id, status="queued", error=None)
        self.dispatch()
        return self.runs.get(run_id)

    def delete(self, run_id: int, timeout: float = 30) -> None:
        run = self.runs.require(run_id)
        if run["status"] in ACTIVE and _alive(run["pid"]):
            os.killpg(run["pid"], signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._running(run["pid"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._running(run["pid"]):
                os.killpg(run["pid"], signal.SIGKILL)
        self.runs.delete(run_id)
        if run["run_dir"]:
            shutil.rmtree(run["run_dir"], ignore_errors=True)

    def wait(self, run_id: int, timeout: float = 600, poll: float = 0.5) -> dict:
        """Block until the run leaves queued/running/stopping (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.reconcile_one(self.runs.require(run_id))
            if run["status"] not in ("queued", *ACTIVE):
                return run
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s")

    # -- reconciling store and processes ------------------------------------------
    def _running(self, pid: int | None) -> bool:
        child = self._children.get(pid)
        if child is not None:  # our own child: reap it so it does not linger as a zombie
            return child.poll() is None
        return _alive(pid)

    def reconcile(self) -> list[dict]:
        """Bring every active run in line with its process, register new checkpoints as
        adapters, then start what the queue allows. Cheap; called whenever runs are read."""
        with self._lock:
            for run in self.runs.list(statuses=ACTIVE):
                self.reconcile_one(run, dispatch=False)
            self.dispatch()
        return self.runs.list()

    def reconcile_one(self, run: dict, dispatch: bool = True) -> dict:
        with self._lock:
            if run["status"] in ACTIVE or run["status"] in ("stopped", "finished", "failed"):
                self._register_adapters(run)
            if run["status"] not in ACTIVE or self._running(run["pid"]):
                return run
            self._children.pop(run["pid"], None)
            folder = Path(run["run_dir"])
            ended = json.loads((folder / "exit.json").read_text()) if (folder / "exit.json").is_file() else None
            code = ended["code"] if ended else None
            output = folder / "output"
            if code == 0 and (output / "final.safetensors").is_file() and run["status"] == "running":
                status, error = "finished", None
            elif run["status"] == "stopping" or (code == 0 and (output / "resume").is_dir()):
                status, error = "stopped", None
            else:
                status = "failed"
                why = (f"exit status {code}" if code is not None
                       else "the process disappeared without an exit status (killed?)")
                error = why + "\n" + "\n".join(tail(folder / "train.log"))
            self._register_adapters(run)
            run = self.runs.update(run["id"], status=status, exit_code=code, error=error,
                                   ended_at=now())
        if dispatch:
            self.dispatch()
        return run

    def _register_adapters(self, run: dict) -> None:
        output = Path(run["run_dir"] or ".") / "output"
        if not output.is_dir():
            return
        known = self.runs.adapter_steps(run["id"])
        project = self.runs.project_name(run)
        for path in sorted(output.glob("step-*.safetensors")):
            step = int(path.stem.split("-")[1])
            if step not in known:
                self.store.add_adapter(project, f"{run['name']} #{run['id']}", path,
                                       run_id=run["id"], step=step)

    # -- monitoring -----------------------------------------------------------------
    def snapshot(self, run_id: int) -> dict:
        """Everything a monitor shows: status, step/total, loss curve, ETA, log tail."""
        run = self.reconcile_one(self.runs.require(run_id))
        folder = Path(run["run_dir"])
        metrics = read_metrics(folder / "output")
        last = metrics[-1] if metrics else {}
        total = last.get("total") or run["config"].get("max_steps")
        return {"run": run, "step": last.get("step", 0), "total": total,
                "loss": last.get("loss"), "lr": last.get("lr"),
                "samples_per_s": last.get("samples_per_s"), "eta_s": last.get("eta"),
                "metrics": metrics, "log": tail(folder / "train.log")}
