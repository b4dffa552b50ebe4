"""The job manager: training runs as supervised subprocesses, tracked in the store.

Each run has a folder `<project>/runs/<id>/` holding the exported dataset, the accelerate
config, `train.log`, `exit.json` (written by the supervisor) and `output/` (the trainer's
metrics.jsonl, checkpoints and resume state). The store row is the source of truth for the
UI and CLI; `reconcile()` brings it in line with the processes, so a studio restart or a
killed trainer never leaves a run "running" or "stopping" forever.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..engine.adapters import resolve_adapter
from ..store.runs import ACTIVE
from ..store import Store, now
from ..trainer import process_group, run_files, steplog, validation
from ..trainer.accelerate_config import write_config
from ..trainer.args import check_args
from ..trainer.lora_io import check_compatible
from ..trainer.samples import list_samples
from . import launch, multinode
from .launch import TrainOptions

LOG_TAIL = 20
# The trainer's fallback error line may sit above a launcher's long traceback.
FATAL_SEARCH = 400
RECONCILE_EVERY = 3.0  # seconds between the app's background reconciles
# The run folder's own files (the output folder's are in run_files.py).
RUN_LOG = "train.log"  # all the launch prints: the supervisor's stdout and stderr
EXIT = "exit.json"     # written by the supervisor when the last process of the run ended

log = logging.getLogger(__name__)


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


def _iso(epoch: float) -> str:
    """A time.time() in the store's format (store.now())."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def failure(folder: Path, code: int | None) -> str:
    """Why a run failed: the trainer's own error first, then the exit status, each node's
    report and the log tail."""
    lines = tail(folder / RUN_LOG, FATAL_SEARCH)
    cause = run_files.read_error(folder / "output") or run_files.fatal_line(lines)
    why = (f"exit status {code}" if code is not None
           else "the process disappeared without an exit status (killed?)")
    return "\n".join([*([cause] if cause else []), why, *multinode.node_report(folder),
                      *lines[-LOG_TAIL:]])


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, debiased at the start as TensorBoard smooths: the loss of
    one step depends mostly on its random timestep, the trend shows only on average."""
    out, average = [], 0.0
    for n, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** n))
    return out


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

    # -- planning -------------------------------------------------------------
    def run_dir(self, project: str, run_id: int) -> Path:
        return self.store.project_dir(project) / "runs" / str(run_id)

    def preview(self, opts: TrainOptions, run_dir: Path | None = None) -> dict:
        """The exact command, environment and accelerate config a run would use."""
        run_dir = run_dir or Path("<run folder>")
        opts = self._start_lora(opts)
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
        # Refuse impossible options now, not when the run leaves the queue.
        launch.accelerate_config(opts)
        multinode.check(opts)
        check_args(launch.trainer_args(opts, Path("dataset"), Path("output"), resume=False))
        opts = self._start_lora(opts)
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

    def _start_lora(self, opts: TrainOptions) -> TrainOptions:
        """The LoRA to start from: an adapter id becomes its file, which must fit the run."""
        if not opts.lora_checkpoint.strip():
            return opts
        try:
            ref = resolve_adapter(opts.lora_checkpoint, self.store.get_adapter)
        except FileNotFoundError as exc:
            raise ValueError(f"LoRA to start from: {exc}") from None
        check_compatible(ref.path, opts.lora_rank, opts.lora_target_modules)
        return dataclasses.replace(opts, lora_checkpoint=str(ref.path))

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
        resume = run_files.current_state(folder / "output") is not None
        try:
            if not (folder / "dataset" / "metadata_edit.csv").is_file():
                from ..dataset.export import export_dataset

                export_dataset(self.store, project, folder / "dataset", overwrite=True)
            write_config(folder / "accelerate_config.yaml", launch.accelerate_config(opts))
            command, shown = self._command(opts, folder, run, resume)
            env = {**os.environ, **launch.launch_env(opts)}
            if opts.device == "npu":  # CANN's set_env.sh first, the Ascend variables on top
                from ..engine.npu.env import training_env

                env = training_env(env, opts.env, opts.cann_set_env or None)
            if self.before_start:
                self.before_start(opts.device)
            # The last start's outcome goes: its exit status and the trainer's own error.
            for outcome in (folder / EXIT, folder / "output" / run_files.ERROR):
                outcome.unlink(missing_ok=True)
            shutil.rmtree(folder / "nodes", ignore_errors=True)
            if opts.num_machines > 1 and opts.launcher == "slurm":
                job = subprocess.run(["sbatch", "--parsable", *command], capture_output=True,
                                     text=True, check=True, env=env).stdout.strip().split(";")[0]
                self.runs.update(run["id"], status="running", pid=None, scheduler_job=job,
                                 started_at=now(), ended_at=None, exit_code=None, error=None,
                                 command=shown)
                return
            printed = (folder / RUN_LOG).open("ab")
            supervised = [sys.executable, "-m", "studio.jobs.supervise",
                          str(folder / EXIT), "--", *command]
            # A new session: the supervisor leads the run's process group (pgid = its pid).
            child = subprocess.Popen(supervised, stdout=printed, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                     cwd=multinode.REPO)
            printed.close()
        except Exception as exc:  # noqa: BLE001 - any failure to start is the run's failure
            detail = getattr(exc, "stderr", None) or exc
            self.runs.update(run["id"], status="failed", error=f"could not start: {detail}",
                             ended_at=now())
            return
        self._children[child.pid] = child
        self.runs.update(run["id"], status="running", pid=child.pid, started_at=now(),
                         ended_at=None, exit_code=None, error=None, command=shown)

    def _command(self, opts: TrainOptions, folder: Path, run: dict, resume: bool):
        """(what to execute, what to show) for this run's layout."""
        if opts.num_machines == 1:
            command = launch.launch_command(opts, folder / "accelerate_config.yaml",
                                            folder / "dataset", folder / "output", resume=resume)
            return command, launch.shell_line(command, launch.launch_env(opts))
        if opts.launcher == "manual":
            command = multinode.node_command(opts, folder, 0, opts.main_ip, resume, sys.executable)
            others = multinode.manual_commands(opts, folder, resume, sys.executable)
            shown = "\n".join([f"# node 0 (started by the studio): {multinode.shell(opts, command)}",
                               *(f"# node {r}: {line}" for r, line in enumerate(others, 1))])
            return command, shown
        if opts.launcher == "slurm":
            script = folder / "sbatch.sh"
            script.write_text(multinode.sbatch_script(opts, folder, f"studio-run-{run['id']}",
                                                      resume, sys.executable))
            return [str(script)], f"sbatch {script}"
        script = folder / "ssh_launch.sh"
        script.write_text(multinode.ssh_script(opts, folder, multinode.hosts(opts), resume,
                                               sys.executable))
        return ["bash", str(script)], f"bash {script}"

    def stop(self, run_id: int) -> dict:
        """Graceful: SIGTERM to the run's process group; the trainer saves a checkpoint."""
        run = self.reconcile_one(self.runs.require(run_id))
        if run["status"] == "queued":
            return self.runs.update(run_id, status="stopped", ended_at=now())
        if run["status"] != "running":
            return run
        self.runs.update(run_id, status="stopping")
        self._signal(run, signal.SIGTERM)
        return self.runs.get(run_id)

    def _signal(self, run: dict, sig: int) -> None:
        """Signal every node of a run: its process group here, Slurm's job, or ssh hosts."""
        opts = TrainOptions.from_dict(run["config"])
        if run.get("scheduler_job"):
            flag = [] if sig == signal.SIGKILL else ["--signal=TERM", "--full"]
            subprocess.run(["scancel", *flag, run["scheduler_job"]], capture_output=True)
            return
        if run["pid"]:
            try:
                os.killpg(run["pid"], sig)
            except ProcessLookupError:
                pass
        if opts.num_machines > 1 and opts.launcher == "ssh":
            for host in multinode.hosts(opts)[1:]:
                subprocess.run(["ssh", "-o", "BatchMode=yes", host,
                                multinode.stop_remote_command(Path(run["run_dir"]))],
                               capture_output=True, timeout=30)

    def resume(self, run_id: int) -> dict:
        run = self.reconcile_one(self.runs.require(run_id))
        if run["status"] in ("queued", *ACTIVE):
            raise ValueError(f"run {run_id} is {run['status']}; stop it before resuming")
        if self._alive_run(run):  # marked ended (say, by a studio that watched one pid only)
            raise ValueError(f"run {run_id} is still running ({self._processes(run)}), although "
                             f"marked {run['status']}; stop it before resuming")
        self.runs.update(run_id, status="queued", error=None)
        self.dispatch()
        return self.runs.get(run_id)

    def delete(self, run_id: int, timeout: float = 30) -> None:
        run = self.runs.require(run_id)
        if run["status"] in ACTIVE and self._alive_run(run):
            self._signal(run, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive_run(run) and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._alive_run(run):
                self._signal(run, signal.SIGKILL)
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
    def _alive_run(self, run: dict) -> bool:
        if run.get("scheduler_job"):  # Slurm knows; an ended job is no longer listed
            listed = subprocess.run(["squeue", "-h", "-j", run["scheduler_job"], "-o", "%T"],
                                    capture_output=True, text=True)
            return bool(listed.stdout.strip())
        return self._running(run["pid"])

    @staticmethod
    def _processes(run: dict) -> str:
        if run.get("scheduler_job"):
            return f"Slurm job {run['scheduler_job']}"
        pids = ", ".join(map(str, process_group.members(run["pid"])))
        return f"process group {run['pid']}: {pids or 'pids unknown'}"

    def _never_joined(self, run: dict) -> bool:
        """Several nodes, and rank 0 has not started after join_timeout: someone is missing.
        (Rank 0 writes output/train.log only once every node has joined.)"""
        opts = run["config"]
        if opts.get("num_machines", 1) < 2 or not run["started_at"]:
            return False
        waited = datetime.now(timezone.utc) - datetime.fromisoformat(run["started_at"])
        joined = (Path(run["run_dir"]) / "output" / run_files.LOG).is_file()
        return not joined and waited.total_seconds() > opts.get("join_timeout", 600)

    def _running(self, pid: int | None) -> bool:
        """The run lives while any process of its group does; the supervisor's pid is the
        group's id, and it may be gone (killed) while its launcher and trainer go on."""
        child = self._children.get(pid)
        if child is not None:  # our own child: reap it so it does not linger as a zombie
            child.poll()
        return process_group.alive(pid)

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
            if run["status"] in ACTIVE or run["status"] in ("stopped", "finished", "failed"):
                self._register_adapters(run)
            if run["status"] == "running" and self._never_joined(run):
                self._signal(run, signal.SIGKILL)
                opts = run["config"]
                error = (f"not every node joined within {opts['join_timeout']}s (rendezvous "
                         f"timeout): node 0 waited at {opts['main_ip'] or '?'}:{opts['main_port']} "
                         f"for {opts['num_machines']} nodes")
                report = multinode.node_report(Path(run["run_dir"]))
                return self.runs.update(run["id"], status="failed", ended_at=now(),
                                        error="\n".join([error, *report]))
            if run["status"] not in ACTIVE or self._alive_run(run):
                return run
            self._children.pop(run["pid"], None)
            folder = Path(run["run_dir"])
            code, ended = self._exit(folder)
            output = folder / "output"
            if code == 0 and (output / run_files.FINAL).is_file() and run["status"] == "running":
                status, error = "finished", None
            elif run["status"] == "stopping" or (code == 0 and
                                                 run_files.current_state(output) is not None):
                status, error = "stopped", None
            else:
                status, error = "failed", failure(folder, code)
            self._register_adapters(run)
            run = self.runs.update(run["id"], status=status, exit_code=code, error=error,
                                   ended_at=_iso(ended) if ended else now())
        if dispatch:
            self.dispatch()
        return run

    @staticmethod
    def _exit(folder: Path) -> tuple[int | None, float | None]:
        """(exit status, when it ended) from the supervisor's exit file; for Slurm runs, the
        worst of the nodes' exit files, with no time."""
        if (folder / EXIT).is_file():
            ended = json.loads((folder / EXIT).read_text())
            return ended["code"], ended.get("ended_at")
        codes = [int(f.read_text().strip() or 1) for f in (folder / "nodes").glob("*.exit")] \
            if (folder / "nodes").is_dir() else []
        return (max(codes, key=abs) if codes else None), None

    def _register_adapters(self, run: dict) -> None:
        output = Path(run["run_dir"] or ".") / "output"
        if not output.is_dir():
            return
        known = self.runs.adapter_steps(run["id"])
        project = self.runs.project_name(run)
        for step, path in sorted(run_files.checkpoint_steps(output).items()):
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
                "peak_mem_gb": last.get("peak_mem_gb"),
                "metrics": metrics, "log": tail(folder / RUN_LOG),
                "loss_smoothed": smoothed([float(m["loss"]) for m in metrics]),
                "validation": validation.read(folder / "output"),
                # Sample edits of the validation pairs, latest checkpoint first.
                "samples": list_samples(folder / "output"),
                "lora_files": sorted((folder / "output").glob("*.safetensors"),
                                     key=lambda p: p.stat().st_mtime, reverse=True)}
