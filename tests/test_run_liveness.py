"""A run lives as long as any process of its group: a killed supervisor takes its launcher
and trainer along, and nothing starts again into the folder while one of them lives
(issue 19, defect 4). Real runs of the demo model under the real job manager."""
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from studio.trainer import run_files
from tests.test_jobs import options, wait_for

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group, seen through psutil (not the studio's code)."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def trainers(pgid: int) -> list[int]:
    found = []
    for pid in group_members(pgid):
        try:
            if psutil.Process(pid).cmdline()[1:3] == ["-m", "studio.trainer"]:
                found.append(pid)
        except psutil.Error:
            continue
    return found


def first_step(jobs, demo_model, groups) -> dict:
    """A long run, once its trainer has written the metrics of a first step."""
    run = jobs.submit("p", options(demo_model, max_steps=400, save_steps=1000))
    groups.append(run["pid"])
    wait_for(lambda: jobs.snapshot(run["id"])["step"] >= 1, what="a first step")
    return run


def test_a_killed_supervisor_takes_its_trainer_along_and_the_run_fails(jobs, demo_model, groups):
    run = first_step(jobs, demo_model, groups)
    pgid, output = run["pid"], Path(run["run_dir"]) / "output"
    assert trainers(pgid)
    os.kill(pgid, signal.SIGKILL)  # the pid `runs show` reports
    killed = time.monotonic()
    wait_for(lambda: not group_members(pgid), timeout=20, what="every process of the run to end")
    print(f"group empty {time.monotonic() - killed:.1f}s after the kill")

    failed = jobs.wait(run["id"], timeout=10)
    assert failed["status"] == "failed" and "without an exit status" in failed["error"]
    # The parent-death signal is SIGTERM: the trainer stopped as on Stop, with a state to resume.
    assert "stopped by SIGTERM" in (output / run_files.LOG).read_text()
    assert run_files.current_state(output) is not None


def test_resume_is_refused_while_a_process_of_the_old_group_lives(jobs, demo_model, groups):
    run = first_step(jobs, demo_model, groups)
    pgid = run["pid"]
    (trainer,) = trainers(pgid)
    os.kill(trainer, signal.SIGSTOP)  # stopped, it cannot act on its parent-death signal yet
    os.kill(pgid, signal.SIGKILL)
    wait_for(lambda: group_members(pgid) == [trainer], timeout=20,
             what="the supervisor and the launcher to die")

    # The trainer still lives: the run is running, whatever a single pid says.
    assert jobs.reconcile_one(jobs.runs.get(run["id"]))["status"] == "running"
    # Even a row another studio marked failed does not start a second trainer into the folder.
    jobs.runs.update(run["id"], status="failed")
    with pytest.raises(ValueError, match=f"still running.*{trainer}"):
        jobs.resume(run["id"])

    os.kill(trainer, signal.SIGCONT)  # it takes its pending SIGTERM: saves a state and exits
    wait_for(lambda: not group_members(pgid), timeout=20, what="the trainer to end")
    resumed = jobs.resume(run["id"])
    groups.append(resumed["pid"])
    assert resumed["status"] == "running" and "--resume" in resumed["command"]
    jobs.delete(run["id"])
