"""Several nodes on one machine: the manual launcher, a Slurm script under stand-in Slurm
commands, and a node that never joins. Every node is a real `accelerate launch` (gloo, CPU)."""
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from studio.jobs.launch import TrainOptions
from studio.jobs.presets import TRAIN_PRESETS
from studio.jobs.multinode import sbatch_script

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(demo_model, **changes) -> TrainOptions:
    return TrainOptions.from_dict({
        **TrainOptions().as_dict(), **TRAIN_PRESETS["Demo on CPU"], "model": str(demo_model),
        "mode": "ddp", "processes_per_node": 1, "num_machines": 2, "main_ip": "127.0.0.1",
        "main_port": free_port(), "max_steps": 4, "save_steps": 2, **changes})


def test_manual_launcher_node_zero_here_node_one_pasted(jobs, demo_model):
    run = jobs.submit("p", two_nodes(demo_model))
    assert run["status"] == "running"
    node1 = re.search(r"^# node 1: (.*)$", run["command"], re.M).group(1)
    assert "--machine_rank 1" in node1 and "--main_process_ip 127.0.0.1" in node1
    other = subprocess.Popen(["bash", "-c", node1], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        done = jobs.wait(run["id"], timeout=300)
    finally:
        other.wait(timeout=120)
    assert done["status"] == "finished", done["error"]
    assert other.returncode == 0
    output = Path(run["run_dir"]) / "output"
    assert (output / "final.safetensors").is_file()
    assert "rank 0 of 2" in (output / "train.log").read_text()  # both nodes trained together
    assert jobs.snapshot(run["id"])["step"] == 4


def test_a_node_that_never_joins_fails_the_run_within_the_timeout(jobs, demo_model):
    run = jobs.submit("p", two_nodes(demo_model, join_timeout=8))
    # The bound tells an 8 s join timeout from the default 600 s one, with room for a loaded
    # machine's slow start (imports, the launcher): no tighter clock than that.
    failed = jobs.wait(run["id"], timeout=300)
    assert failed["status"] == "failed"
    assert "not every node joined within 8s" in failed["error"]
    assert "127.0.0.1" in failed["error"]


def write_tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Stand-ins for sbatch/srun/scontrol/squeue/scancel that run every 'node' here."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    write_tool(bin_dir, "sbatch", """script="${@: -1}"
nodes=$(grep -oP '(?<=#SBATCH --nodes=)\\d+' "$script")
SLURM_JOB_NODELIST=localhost SLURM_NNODES=$nodes setsid bash "$script" > "$script.out" 2>&1 < /dev/null &
echo $!
""")
    write_tool(bin_dir, "srun", """nodes=1
for arg in "$@"; do case $arg in --nodes=*) nodes=${arg#--nodes=};; esac; done
cmd=("$@"); while [[ ${cmd[0]} == --* ]]; do cmd=("${cmd[@]:1}"); done
pids=()
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i "${cmd[@]}" & pids+=($!); done
status=0; for p in "${pids[@]}"; do wait $p || status=$?; done; exit $status
""")
    write_tool(bin_dir, "scontrol", 'echo 127.0.0.1\n')
    write_tool(bin_dir, "squeue", 'for a in "$@"; do [[ $prev == -j ]] && id=$a; prev=$a; done\n'
                                  'kill -0 "$id" 2>/dev/null && echo RUNNING; exit 0\n')
    write_tool(bin_dir, "scancel", 'kill -TERM -- -"${@: -1}"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_script_is_valid_bash_and_trains_on_every_node(jobs, demo_model, fake_slurm):
    opts = two_nodes(demo_model, launcher="slurm", main_ip="")
    script = sbatch_script(opts, Path("/shared/run"), "job")
    assert "#SBATCH --nodes=2" in script and "$SLURM_NODEID" in script
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr

    run = jobs.submit("p", opts)
    assert run["status"] == "running" and run["scheduler_job"]
    assert run["command"].startswith("sbatch ")
    done = jobs.wait(run["id"], timeout=300)
    assert done["status"] == "finished", done["error"]
    folder = Path(run["run_dir"])
    assert (folder / "nodes" / "0.exit").read_text().strip() == "0"
    assert (folder / "nodes" / "1.exit").read_text().strip() == "0"
    assert "rank 0 of 2" in (folder / "output" / "train.log").read_text()
    assert sorted(a["step"] for a in jobs.store.list_adapters("p")) == [2, 4]


def test_impossible_layouts_are_refused_before_queueing(jobs, demo_model):
    with pytest.raises(ValueError, match="sbatch is not on PATH"):
        jobs.submit("p", two_nodes(demo_model, launcher="slurm"))
    with pytest.raises(ValueError, match="need 2 ssh hosts"):
        jobs.submit("p", two_nodes(demo_model, launcher="ssh", hosts="only-one"))
    with pytest.raises(ValueError, match="main_process_ip"):
        jobs.submit("p", two_nodes(demo_model, main_ip=""))
    assert jobs.runs.list() == []


def test_ssh_launcher_starts_the_other_node_over_ssh(jobs, demo_model, tmp_path, monkeypatch):
    """A stand-in `ssh` runs the remote command here, as a real host on shared storage would."""
    bin_dir = tmp_path / "ssh-bin"
    bin_dir.mkdir()
    write_tool(bin_dir, "ssh", 'while [[ $1 == -* ]]; do shift 2; done\n'
                               'echo "$1" >> "$(dirname "$0")/hosts.log"; shift\nexec bash -c "$*"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = jobs.submit("p", two_nodes(demo_model, launcher="ssh", main_ip="127.0.0.1",
                                     hosts="127.0.0.1,node-b"))
    assert run["command"].startswith("bash ") and run["command"].endswith("ssh_launch.sh")
    done = jobs.wait(run["id"], timeout=300)
    assert done["status"] == "finished", done["error"]
    assert (bin_dir / "hosts.log").read_text().split() == ["node-b"]
    folder = Path(run["run_dir"])
    assert [(folder / "nodes" / f"{r}.exit").read_text().strip() for r in (0, 1)] == ["0", "0"]
