"""Starting one run on several nodes with the launchers clusters already have.

Every node runs the same `accelerate launch` with the run's one accelerate config and its
own `--machine_rank` (and the main node's address), reading the run folder on shared
storage. Three ways to start them:

- manual: the studio starts node 0; the page shows the exact command for each other node;
- slurm:  an sbatch script whose `srun` starts one launch per node, rank = $SLURM_NODEID,
          the first node of the allocation as main;
- ssh:    a script that starts node 0 here and the others with `ssh HOST …`.

Rank 0 writes the run's metrics, checkpoints and log (shared storage), so following the run
means following node 0; each node's own output goes to `nodes/<rank>.log`, and its exit
status to `nodes/<rank>.exit`, which is how a failed node is named.
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from . import run_folder
from .launch import TrainOptions, hosts, launch_command, launch_env

LAUNCHERS = ("manual", "slurm", "ssh")
REPO = Path(__file__).resolve().parents[2]


def check(opts: TrainOptions) -> None:
    """Refuse a multi-node layout that cannot start, before it is queued."""
    if opts.num_machines < 2:
        return
    if opts.launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {opts.launcher!r}")
    if opts.launcher == "slurm" and not shutil.which("sbatch"):
        raise ValueError("Slurm's sbatch is not on PATH here; use the 'manual' or 'ssh' launcher")
    if opts.launcher == "ssh" and len(hosts(opts)) != opts.num_machines:
        raise ValueError(f"{opts.num_machines} nodes need {opts.num_machines} ssh hosts (node 0 "
                         f"first), got {len(hosts(opts))}")
    # Node 0's address is checked with the rest of the accelerate config (make_config).


def node_command(opts: TrainOptions, run_dir: Path, rank: int | str, main_ip: str,
                 resume: bool = False, python: str = "python") -> list[str]:
    """The launch for one node; `rank`/`main_ip` may be shell expressions such as $SLURM_NODEID."""
    command = launch_command(opts, run_folder.config(run_dir), run_folder.dataset(run_dir),
                             run_folder.output(run_dir), resume=resume, python=python,
                             cache_dir=run_folder.encode_cache(run_dir))
    at = command.index("--config_file") + 2
    return [*command[:at], "--machine_rank", str(rank), "--main_process_ip", main_ip,
            "--main_process_port", str(opts.main_port), *command[at:]]


def _quote(part: str) -> str:
    # Leave $VARIABLES to the shell that runs the line; quote everything else.
    return part if part.startswith("$") and part[1:].replace("_", "").isalnum() else shlex.quote(part)


def shell(opts: TrainOptions, command: list[str]) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(launch_env(opts).items()))
    return f"cd {shlex.quote(str(REPO))} && env {env} {' '.join(map(_quote, command))}"


def manual_commands(opts: TrainOptions, run_dir: Path, resume: bool = False,
                    python: str = "python") -> list[str]:
    """What to paste on nodes 1..N-1 (node 0 is started by the studio)."""
    return [shell(opts, node_command(opts, run_dir, rank, opts.main_ip, resume, python))
            for rank in range(1, opts.num_machines)]


def _node_runner(opts: TrainOptions, run_dir: Path, rank: str, main_ip: str, resume: bool,
                 python: str) -> str:
    """One node's launch, its output to nodes/<rank>.log and exit status to nodes/<rank>.exit."""
    nodes = shlex.quote(str(run_folder.nodes(run_dir)))
    line = shell(opts, node_command(opts, run_dir, rank, main_ip, resume, python))
    return (f"mkdir -p {nodes}; ( {line} ) > {nodes}/{rank}.log 2>&1; "
            f"code=$?; echo $code > {nodes}/{rank}.exit; exit $code")


def sbatch_script(opts: TrainOptions, run_dir: Path, job_name: str, resume: bool = False,
                  python: str = "python") -> str:
    per_node = _node_runner(opts, run_dir, "$SLURM_NODEID", "$MAIN_IP", resume, python)
    gres = {"cuda": f"#SBATCH --gres=gpu:{opts.processes_per_node}\n",
            "npu": f"#SBATCH --gres=npu:{opts.processes_per_node}\n"}.get(opts.device, "")
    return f"""#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={opts.num_machines}
#SBATCH --ntasks-per-node=1
{gres}#SBATCH --output={run_dir}/slurm-%j.log
# Written by Qwen Image Edit Studio: one `accelerate launch` per node, rank = SLURM_NODEID,
# the first node of the allocation is the main node.
set -u
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MAIN_IP
srun --nodes={opts.num_machines} --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    bash -c {shlex.quote(per_node)}
"""


def ssh_script(opts: TrainOptions, run_dir: Path, hosts: list[str], resume: bool = False,
               python: str = "python") -> str:
    """Node 0 runs where the script runs (hosts[0] is its address for the others); node r
    runs on hosts[r] over ssh. The script ends when every node has."""
    if len(hosts) != opts.num_machines:
        raise ValueError(f"{opts.num_machines} nodes need {opts.num_machines} hosts, got {len(hosts)}")
    main_ip = opts.main_ip or hosts[0]
    lines = ["#!/bin/bash", "# Written by Qwen Image Edit Studio: node 0 here, the others over ssh.",
             "set -u", "pids=()"]
    for rank, host in enumerate(hosts):
        runner = _node_runner(opts, run_dir, str(rank), main_ip, resume, python)
        if rank == 0:
            lines.append(f"bash -c {shlex.quote(runner)} &")
        else:
            lines.append(f"ssh -o BatchMode=yes {shlex.quote(host)} {shlex.quote(runner)} &")
        lines.append("pids+=($!)")
    lines += ["status=0", 'for pid in "${pids[@]}"; do wait "$pid" || status=$?; done', "exit $status"]
    return "\n".join(lines) + "\n"


def stop_remote_command(run_dir: Path) -> str:
    """Sent over ssh to each host on Stop: SIGTERM to that node's trainer of this run only."""
    return f"pkill -TERM -f {shlex.quote('studio.trainer .*' + str(run_dir))}"


def node_report(run_dir: Path) -> list[str]:
    """Per node: exit status (if ended) and its last log line, for a failure message."""
    folder = run_folder.nodes(run_dir)
    report = []
    for log in sorted(folder.glob("*.log")) if folder.is_dir() else []:
        rank = log.stem
        exit_file = folder / f"{rank}.exit"
        state = f"exit status {exit_file.read_text().strip()}" if exit_file.is_file() else "still running or vanished"
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        report.append(f"node {rank}: {state}" + (f"; last line: {lines[-1][-200:]}" if lines else ""))
    return report
