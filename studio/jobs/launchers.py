"""The four ways a run starts, and how it is signalled and seen alive: one node here under
the supervisor, several nodes with node 0 here and the others pasted by hand ('manual') or
started over ssh, or a Slurm job. No store here: the manager records what these return."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..trainer import process_group, run_files
from . import launch, multinode, run_folder
from .launch import TrainOptions


@dataclass
class Started:
    shown: str                          # the command as the run's page shows it
    child: subprocess.Popen | None = None  # the supervisor, leading the run's process group
    scheduler_job: str | None = None    # Slurm's job id


def command(opts: TrainOptions, folder: Path, run_id: int, resume: bool) -> tuple[list[str], str]:
    """(what to execute, what to show) for this run's layout."""
    if opts.num_machines == 1:
        cmd = launch.launch_command(opts, run_folder.config(folder), run_folder.dataset(folder),
                                    run_folder.output(folder), resume=resume,
                                    cache_dir=run_folder.encode_cache(folder))
        return cmd, launch.shell_line(cmd, launch.launch_env(opts))
    if opts.launcher == "manual":
        cmd = multinode.node_command(opts, folder, 0, opts.main_ip, resume, sys.executable)
        others = multinode.manual_commands(opts, folder, resume, sys.executable)
        shown = "\n".join([f"# node 0 (started by the studio): {multinode.shell(opts, cmd)}",
                           *(f"# node {r}: {line}" for r, line in enumerate(others, 1))])
        return cmd, shown
    if opts.launcher == "slurm":
        script = folder / "sbatch.sh"
        script.write_text(multinode.sbatch_script(opts, folder, f"studio-run-{run_id}", resume,
                                                  sys.executable))
        return [str(script)], f"sbatch {script}"
    script = folder / "ssh_launch.sh"
    script.write_text(multinode.ssh_script(opts, folder, launch.hosts(opts), resume, sys.executable))
    return ["bash", str(script)], f"bash {script}"


def environment(opts: TrainOptions) -> dict[str, str]:
    """This process's environment with the run's on top; on an NPU, CANN's set_env.sh first
    and the Ascend variables on top of it."""
    env = {**os.environ, **launch.launch_env(opts)}
    if opts.device == "npu":
        from ..engine.npu.env import training_env

        env = training_env(env, opts.env, opts.cann_set_env or None)
    return env


def supervised(cmd: list[str], folder: Path, env: dict) -> subprocess.Popen:
    """Start `cmd` under the supervisor (supervise.py): its output appended to the folder's
    train.log, its exit status written to exit.json. The caller reaps the returned child."""
    with (folder / run_folder.LOG).open("ab") as printed:
        # A new session: the supervisor leads the process group (pgid = its pid).
        return subprocess.Popen([sys.executable, "-m", "studio.jobs.supervise",
                                 str(folder / run_folder.EXIT), "--", *cmd],
                                stdout=printed, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=multinode.REPO)


def start(opts: TrainOptions, folder: Path, run_id: int, resume: bool, env: dict) -> Started:
    cmd, shown = command(opts, folder, run_id, resume)
    if opts.num_machines > 1 and opts.launcher == "slurm":
        job = subprocess.run(["sbatch", "--parsable", *cmd], capture_output=True, text=True,
                             check=True, env=env).stdout.strip().split(";")[0]
        return Started(shown, scheduler_job=job)
    return Started(shown, child=supervised(cmd, folder, env))


def signal_group(pgid: int | None, sig: int) -> bool:
    """Signal a supervised process group; False if it is gone."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def send(run: dict, sig: int) -> None:
    """Signal every node of a run: its process group here, Slurm's job, or ssh hosts."""
    opts = TrainOptions.from_dict(run["config"])
    if run.get("scheduler_job"):
        flag = [] if sig == signal.SIGKILL else ["--signal=TERM", "--full"]
        subprocess.run(["scancel", *flag, run["scheduler_job"]], capture_output=True)
        return
    signal_group(run["pid"], sig)
    if opts.num_machines > 1 and opts.launcher == "ssh":
        for host in launch.hosts(opts)[1:]:
            subprocess.run(["ssh", "-o", "BatchMode=yes", host,
                            multinode.stop_remote_command(Path(run["run_dir"]))],
                           capture_output=True, timeout=30)


def alive(run: dict) -> bool:
    """A run lives while any process of its group does (the supervisor's pid is the group's
    id, and it may be gone while its launcher and trainer go on), or while Slurm lists it."""
    if run.get("scheduler_job"):
        listed = subprocess.run(["squeue", "-h", "-j", run["scheduler_job"], "-o", "%T"],
                                capture_output=True, text=True)
        return bool(listed.stdout.strip())
    return process_group.alive(run["pid"])


def processes(run: dict) -> str:
    if run.get("scheduler_job"):
        return f"Slurm job {run['scheduler_job']}"
    pids = ", ".join(map(str, process_group.members(run["pid"])))
    return f"process group {run['pid']}: {pids or 'pids unknown'}"


def never_joined(run: dict) -> str | None:
    """Several nodes, and rank 0 has not started after join_timeout: why the run failed.
    (Rank 0 writes output/train.log only once every node has joined.)"""
    opts = run["config"]
    if opts.get("num_machines", 1) < 2 or not run["started_at"]:
        return None
    waited = datetime.now(timezone.utc) - datetime.fromisoformat(run["started_at"])
    joined = (run_folder.output(run["run_dir"]) / run_files.LOG).is_file()
    if joined or waited.total_seconds() <= opts.get("join_timeout", 600):
        return None
    return "\n".join([f"not every node joined within {opts['join_timeout']}s (rendezvous "
                      f"timeout): node 0 waited at {opts['main_ip'] or '?'}:{opts['main_port']} "
                      f"for {opts['num_machines']} nodes",
                      *multinode.node_report(Path(run["run_dir"]))])


def exit_status(folder: Path) -> tuple[int | None, float | None]:
    """(exit status, when it ended) from the supervisor's exit file; for Slurm runs, the
    worst of the nodes' exit files, with no time."""
    if (folder / run_folder.EXIT).is_file():
        ended = json.loads((folder / run_folder.EXIT).read_text())
        return ended["code"], ended.get("ended_at")
    nodes = run_folder.nodes(folder)
    codes = [int(f.read_text().strip() or 1) for f in nodes.glob("*.exit")] if nodes.is_dir() else []
    return (max(codes, key=abs) if codes else None), None
