"""A run lives as long as any process of its group: a killed supervisor takes its launcher
and trainer along, and nothing starts again into the folder while one of them lives
(issue 19, defect 4). Real runs of the demo model under the real job manager.

Each kill lands while the trainer sits at a fault point (studio/trainer/faults.py), so no
test races a run's steps: the run cannot end before the kill, and where it stops is known."""
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


def paused(jobs, demo_model, groups, monkeypatch, marker: Path, at: str, action: str) -> dict:
    """A run whose trainer waits at fault point `at` (`action`: pause or pause-until-stop,
    studio/trainer/faults.py) until the test deletes `marker`. Checkpoints every 2 steps."""
    monkeypatch.setenv("STUDIO_FAULT_AT", at)
    monkeypatch.setenv("STUDIO_FAULT_ACTION", action)
    monkeypatch.setenv("STUDIO_FAULT_MARKER", str(marker))
    run = jobs.submit("p", options(demo_model, max_steps=8, save_steps=2, sample_steps=0))
    groups.append(run["pid"])  # a failing test leaves no paused trainer behind
    wait_for(marker.exists, what=f"the trainer at {at}")
    for name in ("STUDIO_FAULT_AT", "STUDIO_FAULT_ACTION", "STUDIO_FAULT_MARKER"):
        monkeypatch.delenv(name)  # later runs go straight through
    return run


def test_a_killed_supervisor_takes_its_trainer_along_and_the_run_fails(
        jobs, demo_model, groups, monkeypatch, tmp_path):
    # The trainer waits after step 2's validation loss until it is told to stop: by its
    # launcher, which relays the supervisor's death, or by its own parent-death signal where
    # the launcher dies first. (The launcher SIGKILLs it if it has not exited 5 s after the
    # relay: accelerate's grace period. From this point one step and a save are left.)
    run = paused(jobs, demo_model, groups, monkeypatch, tmp_path / "marker", "validation:2",
                 "pause-until-stop")
    pgid, output = run["pid"], Path(run["run_dir"]) / "output"
    assert trainers(pgid)
    os.kill(pgid, signal.SIGKILL)  # the pid `runs show` reports
    killed = time.monotonic()
    wait_for(lambda: not group_members(pgid), what="every process of the run to end")
    print(f"group empty {time.monotonic() - killed:.1f}s after the kill")

    failed = jobs.wait(run["id"], timeout=120)
    assert failed["status"] == "failed" and "without an exit status" in failed["error"]
    # The death signals are SIGTERM: the trainer stopped as on Stop, one step on, with a
    # state to resume.
    assert "stopped by SIGTERM after step 3" in (output / run_files.LOG).read_text()
    assert run_files.current_state(output) == run_files.state_dir(output, 3)


def test_resume_is_refused_while_a_process_of_the_old_group_lives(
        jobs, demo_model, groups, monkeypatch, tmp_path):
    marker = tmp_path / "marker"
    run = paused(jobs, demo_model, groups, monkeypatch, marker, "after-saved:2", "pause")
    pgid = run["pid"]
    (trainer,) = trainers(pgid)
    # The launcher and the supervisor die at once (SIGKILL, as by the OOM killer): the trainer
    # gets its parent-death SIGTERM, but sits at its fault point until the test lets it go.
    # (Killed by SIGKILL, the launcher cannot relay a stop, nor SIGKILL the trainer after its
    # grace period as it does when the supervisor alone dies.)
    os.kill(psutil.Process(trainer).ppid(), signal.SIGKILL)
    os.kill(pgid, signal.SIGKILL)
    wait_for(lambda: group_members(pgid) == [trainer],
             what="the supervisor and the launcher to die")

    # The trainer still lives: the run is running, whatever a single pid says.
    assert jobs.reconcile_one(jobs.runs.get(run["id"]))["status"] == "running"
    # Even a row another studio marked failed does not start a second trainer into the folder.
    jobs.runs.update(run["id"], status="failed")
    with pytest.raises(ValueError, match=f"still running.*{trainer}"):
        jobs.resume(run["id"])

    marker.unlink()  # it acts on its pending SIGTERM: one step more, a state, and it exits
    wait_for(lambda: not group_members(pgid), what="the trainer to end")
    output = Path(run["run_dir"]) / "output"
    assert "stopped by SIGTERM after step 3" in (output / run_files.LOG).read_text()
    resumed = jobs.resume(run["id"])
    groups.append(resumed["pid"])
    assert resumed["status"] == "running" and "--resume" in resumed["command"]
    jobs.delete(run["id"])
