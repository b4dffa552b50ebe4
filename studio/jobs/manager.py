"""The job manager: training runs as supervised subprocesses, tracked in the store.

It queues runs, starts them when their devices are free (launchers.py), settles their
status from their processes and files (status.py), registers their checkpoints as adapters
and reads their progress (monitor.py). The store row is what the UI and CLI show;
`reconcile()` brings it in line with the processes, so a studio restart or a killed trainer
never leaves a run "running" or "stopping" forever. A run's folder: run_folder.py.
What a run would be before it is queued (its launch, its memory plan) is planning.py; what
a run's checkpoints scored, results.py: neither needs the processes or the lock.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..store import Store, now
from ..store.runs import ACTIVE
from ..trainer import run_files
from ..trainer.accelerate_config import write_config
from ..trainer.args import check_args
from . import launch, launchers, memory, monitor, multinode, planning, run_folder, status
from .launch import TrainOptions
from .sources import trainer_source_args

RECONCILE_EVERY = 3.0  # seconds between the app's background reconciles

log = logging.getLogger(__name__)


def _iso(epoch: float) -> str:
    """A time.time() in the store's format (store.now())."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


class JobManager:
    def __init__(self, store: Store, before_start: Callable[[str], None] | None = None):
        """`before_start(device)` runs before a run takes a device (the UI frees its pipeline)."""
        self.store = store
        self.runs = store.runs
        self.before_start = before_start
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._reconciler: threading.Thread | None = None
        self._stop_reconciling = threading.Event()

    def run_dir(self, project: str, run_id: int) -> Path:
        return self.store.project_dir(project) / "runs" / str(run_id)

    # -- lifecycle ------------------------------------------------------------
    def submit(self, project: str, opts: TrainOptions, name: str | None = None) -> dict:
        """Queue a run (its dataset is exported when it starts) and start it if its devices
        are free."""
        # Refuse impossible options now, not when the run leaves the queue.
        launch.accelerate_config(opts)
        multinode.check(opts)
        check_args(launch.trainer_args(opts, Path(run_folder.DATASET), Path(run_folder.OUTPUT),
                                       resume=False))
        source = trainer_source_args(self.store, project) or []
        opts = dataclasses.replace(planning.start_lora(self.store, opts),
                                   model=str(planning.model_folder(self.store, opts.model)),
                                   sample_lora=planning.absolute(opts.sample_lora),
                                   source_args=source)
        if not source and not self.store.pairs.count(project):
            raise ValueError(f"project {project!r} has no pairs to train on; add some in the "
                             f"Dataset tab, or attach a parquet source (studio dataset attach)")
        memory.check(opts, Path(opts.model))
        from ..dataset.validate import check_for_launch

        # Stored issues are reused; only pairs changed since their last check at this
        # max_pixels are checked again, with the files and duplicates of all (no image read).
        # A file deleted after this check fails the run's export, naming the pair.
        report = check_for_launch(self.store, project, max_pixels=opts.max_pixels)
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
        folder = Path(run["run_dir"])
        resume = run_files.current_state(run_folder.output(folder)) is not None
        try:
            if not (run_folder.dataset(folder) / "metadata_edit.csv").is_file():
                from ..dataset.export import export_dataset

                exported = export_dataset(self.store, self.runs.project_name(run),
                                          run_folder.dataset(folder), overwrite=True, link=True)
                run_folder.note(folder, f"dataset: {exported.pairs} pairs, {exported.linked} images "
                                        f"hard-linked from the project, {exported.copied} copied"
                                + "".join(f"; {n}" for n in exported.notes))
            write_config(run_folder.config(folder), launch.accelerate_config(opts))
            env = launchers.environment(opts)
            if self.before_start:
                self.before_start(opts.device)
            # The last start's outcome goes: its exit status and the trainer's own error.
            for outcome in (folder / run_folder.EXIT, run_folder.output(folder) / run_files.ERROR):
                outcome.unlink(missing_ok=True)
            shutil.rmtree(run_folder.nodes(folder), ignore_errors=True)
            started = launchers.start(opts, folder, run["id"], resume, env)
        except Exception as exc:  # noqa: BLE001 - any failure to start is the run's failure
            detail = getattr(exc, "stderr", None) or exc
            self._move(run, "failed", error=f"could not start: {detail}", ended_at=now())
            return
        pid = started.child.pid if started.child else None
        if started.child:
            self._children[pid] = started.child
        self._move(run, "running", pid=pid, scheduler_job=started.scheduler_job, started_at=now(),
                   ended_at=None, exit_code=None, error=None, command=started.shown)

    def _move(self, run: dict, new: str, **fields) -> dict:
        """A status change the state machine allows, made only if no other process has
        changed the run since it was read (then the row as that process left it)."""
        status.check_move(run["status"], new)
        moved = self.runs.move(run["id"], run["status"], new, **fields)
        return moved if moved is not None else self.runs.require(run["id"])

    def stop(self, run_id: int) -> dict:
        """Graceful: SIGTERM to the run's process group; the trainer saves a checkpoint."""
        run = self.reconcile_one(self.runs.require(run_id))
        if run["status"] == "queued":
            return self._move(run, "stopped", ended_at=now())
        if run["status"] != "running":
            return run
        run = self._move(run, "stopping")
        if run["status"] == "stopping":
            launchers.send(run, signal.SIGTERM)
        return run

    def resume(self, run_id: int) -> dict:
        run = self.reconcile_one(self.runs.require(run_id))
        if run["status"] not in status.ENDED:
            raise ValueError(f"run {run_id} is {run['status']}; stop it before resuming")
        if launchers.alive(run):  # marked ended (say, by a studio that watched one pid only)
            raise ValueError(f"run {run_id} is still running ({launchers.processes(run)}), "
                             f"although marked {run['status']}; stop it before resuming")
        self._move(run, "queued", error=None)
        self.dispatch()
        return self.runs.get(run_id)

    def delete(self, run_id: int, timeout: float = 30) -> None:
        run = self.runs.require(run_id)
        if run["status"] in ACTIVE and launchers.alive(run):
            launchers.send(run, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while launchers.alive(run) and time.monotonic() < deadline:
                time.sleep(0.2)
            if launchers.alive(run):
                launchers.send(run, signal.SIGKILL)
        self.runs.delete(run_id)
        if run["run_dir"]:
            shutil.rmtree(run["run_dir"], ignore_errors=True)

    def wait(self, run_id: int, timeout: float = 600, poll: float = 0.5) -> dict:
        """Block until the run leaves queued/running/stopping (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.reconcile_one(self.runs.require(run_id))
            if run["status"] in status.ENDED:
                return run
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s")

    # -- reconciling store and processes ------------------------------------------
    def _alive(self, run: dict) -> bool:
        child = self._children.get(run["pid"])
        if child is not None:  # our own child: reap it so it does not linger as a zombie
            child.poll()
        return launchers.alive(run)

    def reconcile(self) -> list[dict]:
        """Bring every active run in line with its process, register new checkpoints as
        adapters, then start what the queue allows. Cheap; called whenever runs are read."""
        with self._lock:
            for run in self.runs.list(statuses=ACTIVE):
                self.reconcile_one(run, dispatch=False)
            self.dispatch()
        return self.runs.list()

    def start_reconciler(self, every: float = RECONCILE_EVERY) -> threading.Thread:
        """Reconcile every `every` seconds in a daemon thread, so a run that ended is settled
        and the queue moves on with no page open. One thread per manager, however often
        this is called."""
        with self._lock:
            if self._reconciler is None:
                self._stop_reconciling.clear()
                self._reconciler = threading.Thread(target=self._reconcile_every, args=(every,),
                                                    name="reconcile-runs", daemon=True)
                self._reconciler.start()
            return self._reconciler

    def stop_reconciler(self) -> None:
        with self._lock:
            thread, self._reconciler = self._reconciler, None
        self._stop_reconciling.set()
        if thread is not None:
            thread.join()  # not under the lock: the thread may be waiting for it

    def _reconcile_every(self, every: float) -> None:
        while not self._stop_reconciling.wait(every):
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - one failure (a busy database) must not end it
                log.exception("reconciling the training runs failed; trying again in %gs", every)

    def reconcile_one(self, run: dict, dispatch: bool = True) -> dict:
        with self._lock:
            if run["status"] != "queued":
                self._register_adapters(run)
            if run["status"] == "running" and (missing := launchers.never_joined(run)):
                launchers.send(run, signal.SIGKILL)
                return self._move(run, "failed", ended_at=now(), error=missing)
            if run["status"] not in ACTIVE or self._alive(run):
                return run
            self._children.pop(run["pid"], None)
            folder = Path(run["run_dir"])
            code, ended = launchers.exit_status(folder)
            output = run_folder.output(folder)
            new = status.settled(run["status"], code, (output / run_files.FINAL).is_file(),
                                 run_files.current_state(output) is not None)
            self._register_adapters(run)
            run = self._move(run, new, exit_code=code, ended_at=_iso(ended) if ended else now(),
                             error=monitor.failure(folder, code) if new == "failed" else None)
        if dispatch:
            self.dispatch()
        return run

    def _register_adapters(self, run: dict) -> None:
        output = run_folder.output(run["run_dir"] or ".")
        if not output.is_dir():
            return
        known = self.runs.adapter_steps(run["id"])
        project = self.runs.project_name(run)
        files = run_files.checkpoint_steps(output)
        self.runs.drop_adapters(run["id"], known - set(files))  # pruned: out of the pickers
        for step, path in sorted(files.items()):
            if step not in known:
                self.store.add_adapter(project, f"{run['name']} #{run['id']}", path,
                                       run_id=run["id"], step=step)

    # -- monitoring -----------------------------------------------------------------
    def snapshot(self, run_id: int) -> dict:
        """Everything a monitor shows, of the run as it is now (reconciled first)."""
        return monitor.progress(self.reconcile_one(self.runs.require(run_id)))
