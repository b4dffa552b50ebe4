"""Training runs through the job manager: real `accelerate launch` subprocesses on the demo model."""
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from studio.store import NotFoundError, Store, now
from studio.trainer import run_files
from studio.jobs.manager import JobManager
from studio.jobs.run_folder import EXIT
from studio.jobs.run_folder import LOG as RUN_LOG
from studio.jobs.launch import TrainOptions
from studio.jobs.presets import TRAIN_PRESETS
from studio.jobs.multinode import REPO
from tests.waiting import wait_for  # noqa: F401 (shared: other test files import it from here)

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast


def options(demo_model, **changes) -> TrainOptions:
    return TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS["Demo on CPU"],
                                   "model": str(demo_model), **changes})


def fault_pause(monkeypatch, marker: Path, at: str, action: str = "pause") -> None:
    """Runs started from now on wait at fault point `at` (studio/trainer/faults.py) until the
    test deletes `marker` (pause-until-stop: or until they are asked to stop)."""
    monkeypatch.setenv("STUDIO_FAULT_AT", at)
    monkeypatch.setenv("STUDIO_FAULT_ACTION", action)
    monkeypatch.setenv("STUDIO_FAULT_MARKER", str(marker))


def trainer_pids(run) -> list[int]:
    """The trainer processes themselves (python -m studio.trainer), under launcher and supervisor."""
    children = psutil.Process(run["pid"]).children(recursive=True)
    return [c.pid for c in children if c.cmdline()[1:3] == ["-m", "studio.trainer"]]


def test_runs_queue_finish_register_adapters_and_survive_a_studio_restart(
        jobs, demo_model, monkeypatch, tmp_path):
    # The first run waits after its step-2 checkpoint until the test lets it go: it is still
    # running when the second is submitted and when the "restarted" studio looks.
    marker = tmp_path / "marker"
    fault_pause(monkeypatch, marker, "after-saved:2")
    first = jobs.submit("p", options(demo_model, max_steps=4, save_steps=2))
    monkeypatch.delenv("STUDIO_FAULT_AT")  # the second run, started later, goes straight through
    second = jobs.submit("p", options(demo_model, max_steps=4, save_steps=2))
    assert first["status"] == "running" and second["status"] == "queued"  # both want the CPU
    assert "accelerate.commands.launch" in first["command"] and "-m studio.trainer" in first["command"]

    # A new manager over a new store connection, as after a studio restart: the live run is
    # reattached (still running), and its end is learnt from the supervisor's exit file.
    restarted = JobManager(Store(jobs.store.root))
    assert restarted.runs.get(first["id"])["status"] == "running"
    wait_for(marker.exists, what="the first run at its step-2 checkpoint")
    assert restarted.reconcile_one(restarted.runs.get(first["id"]))["status"] == "running"
    marker.unlink()
    done = restarted.wait(first["id"], timeout=240)
    assert done["status"] == "finished" and done["exit_code"] == 0
    snap = restarted.snapshot(first["id"])
    assert snap["step"] == snap["total"] == 4 and len(snap["metrics"]) == 4
    assert all(m["loss"] > 0 for m in snap["metrics"])
    steps = sorted(a["step"] for a in restarted.store.list_adapters("p") if a["run_id"] == first["id"])
    assert steps == [2, 4]

    # The queue moved on by itself: the second run started once the CPU was free.
    assert restarted.wait(second["id"], timeout=240)["status"] == "finished"
    assert restarted.runs.get(second["id"])["started_at"] >= done["ended_at"]

    # The second run linked the project's images, encoded nothing (the project's cache) and,
    # with the same settings and seed, trained the same LoRA bit for bit.
    one, two = (Path(restarted.runs.get(r["id"])["run_dir"]) for r in (first, second))
    assert all(f.stat().st_nlink >= 2 for f in (two / "dataset" / "images").iterdir())
    assert "images hard-linked from the project" in (two / "train.log").read_text()
    first_log, second_log = ((d / "output" / "train.log").read_text() for d in (one, two))
    assert "encoding 4 of 4 pairs" in first_log and "encoding" not in second_log
    assert "all 4 pairs found in the cache" in second_log
    a, b = (load_file(d / "output" / "final.safetensors") for d in (one, two))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_saves_a_checkpoint_and_resume_finishes_the_same_run(jobs, demo_model, monkeypatch,
                                                                  tmp_path):
    # Each Stop lands while the trainer waits after a checkpoint's validation loss; the
    # signal itself ends the wait, and the trainer stops after one step more.
    marker = tmp_path / "marker"
    fault_pause(monkeypatch, marker, "validation:2", "pause-until-stop")
    run = jobs.submit("p", options(demo_model, max_steps=8, save_steps=2, sample_steps=0))
    output = Path(run["run_dir"]) / "output"
    wait_for(marker.exists, what="the trainer after step 2")
    assert jobs.stop(run["id"])["status"] == "stopping"
    stopped = jobs.wait(run["id"], timeout=120)
    assert stopped["status"] == "stopped", stopped["error"]
    state = json.loads((run_files.current_state(output) / run_files.STATE).read_text())
    assert state["step"] == 3
    assert (output / "step-000003.safetensors").is_file()

    marker.unlink()
    fault_pause(monkeypatch, marker, "validation:6", "pause-until-stop")
    resumed = jobs.resume(run["id"])
    assert resumed["status"] == "running"
    wait_for(marker.exists, what="the resumed trainer after step 6")
    jobs.stop(run["id"])
    assert jobs.wait(run["id"], timeout=120)["status"] == "stopped"
    metrics = jobs.snapshot(run["id"])["metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 8))  # no gap, no repeat
    assert "resumed at step 3" in (Path(run["run_dir"]) / "train.log").read_text()


def test_a_killed_trainer_marks_the_run_failed_with_its_last_lines(jobs, demo_model, monkeypatch,
                                                                  tmp_path):
    marker = tmp_path / "marker"
    fault_pause(monkeypatch, marker, "after-saved:2")  # killed there, while it waits
    run = jobs.submit("p", options(demo_model, max_steps=8, save_steps=2, sample_steps=0))
    wait_for(marker.exists, what="the trainer after step 2")
    pids = trainer_pids(jobs.runs.get(run["id"]))
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    failed = jobs.wait(run["id"], timeout=120)
    assert failed["status"] == "failed"
    assert failed["exit_code"] not in (None, 0)
    assert "exit status" in failed["error"] and "INFO" in failed["error"]  # the log tail


def test_a_project_without_pairs_is_refused(jobs, demo_model):
    jobs.store.create_project("empty")
    with pytest.raises(ValueError, match="no pairs"):
        jobs.submit("empty", options(demo_model))
    with pytest.raises(ValueError, match="main_process_ip"):
        jobs.submit("p", options(demo_model, mode="ddp", processes_per_node=2, num_machines=2))
    assert jobs.runs.list() == []


def test_smoothed_loss_is_a_debiased_moving_average():
    from studio.jobs.monitor import smoothed

    assert smoothed([]) == []
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    # By hand, weight 0.5: averages 0.5, 0.5*0.5 + 0.5*3 = 1.75; debiased 1.0, 1.75 / 0.75.
    assert smoothed([1.0, 3.0], weight=0.5) == pytest.approx([1.0, 7 / 3])
    noisy = [1.0, 3.0] * 20
    assert max(smoothed(noisy)[10:]) - min(smoothed(noisy)[10:]) < 0.5  # the noise is damped


def test_a_run_starts_from_a_project_adapter_and_a_misfit_one_is_refused(jobs, demo_model):
    first = jobs.submit("p", options(demo_model, max_steps=2, save_steps=2))
    assert jobs.wait(first["id"], timeout=240)["status"] == "finished"
    (adapter,) = jobs.store.list_adapters("p")

    with pytest.raises(ValueError, match="rank 4; set the LoRA rank"):
        jobs.submit("p", options(demo_model, lora_checkpoint=str(adapter["id"]), lora_rank=8))
    with pytest.raises(NotFoundError, match="no adapter with id 999"):
        jobs.submit("p", options(demo_model, lora_checkpoint="999"))

    second = jobs.submit("p", options(demo_model, max_steps=2, save_steps=2,
                                      lora_checkpoint=str(adapter["id"])))
    assert second["config"]["lora_checkpoint"] == adapter["path"]  # the id, resolved for good
    assert f"--lora_checkpoint {adapter['path']}" in second["command"]
    assert jobs.wait(second["id"], timeout=240)["status"] == "finished"
    log = (Path(second["run_dir"]) / "output" / "train.log").read_text()
    assert f"started from {adapter['path']}" in log


def test_cli_trains_follows_lists_shows_and_deletes_a_run(projects, demo_model, capsys):
    from studio.cli import main
    from studio.dataset.synthetic_pairs import add_synthetic_pairs

    store = Store(projects)
    store.create_project("p")
    add_synthetic_pairs(store, "p", 4)
    assert main(["train", "--project", "p", "--model", str(demo_model), "--max-steps", "2",
                 "--save-steps", "2", "--sample-steps", "0"]) == 0  # follows until it ends
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("finished")
    assert main(["runs", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["project"], row["status"], row["step"], row["total"]) == ("p", "finished", 2, 2)
    assert main(["runs", "show", str(row["id"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["val_loss"] > 0 and any("done: 2 steps" in line for line in shown["log"])
    assert main(["runs", "delete", str(row["id"])]) == 0
    assert not Path(row["run_dir"]).exists() and Store(projects).runs.list() == []


def ended_run(jobs, code: int, stderr: str = "", final: bool = False) -> dict:
    """A run still marked running whose real supervisor ran a stand-in for the trainer that
    printed `stderr` and exited with `code`, as if it had ended while nobody looked."""
    run = jobs.runs.create("p", "stand-in", "", TrainOptions().as_dict(), "cpu")
    folder = jobs.run_dir("p", run["id"])
    (folder / "output").mkdir(parents=True)
    if final:
        (folder / "output" / run_files.FINAL).write_bytes(b"")
    script = f"import sys; sys.stderr.write({stderr!r}); sys.exit({code})"
    with (folder / RUN_LOG).open("ab") as log:
        supervisor = subprocess.Popen([sys.executable, "-m", "studio.jobs.supervise",
                                       str(folder / EXIT), "--", sys.executable, "-c", script],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                      start_new_session=True)
        supervisor.wait()
    return jobs.runs.update(run["id"], status="running", pid=supervisor.pid, run_dir=str(folder),
                            started_at=now())


def test_runs_show_prints_the_reconciled_status_at_once(jobs, projects, capsys):
    from studio.cli import main

    run = ended_run(jobs, 1)
    assert main(["runs", "show", str(run["id"]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "failed" and shown["exit_code"] == 1


def test_a_run_ends_at_the_time_its_supervisor_recorded(jobs):
    run = ended_run(jobs, 0, final=True)
    exit_file = Path(run["run_dir"]) / EXIT
    recorded = json.loads(exit_file.read_text())
    recorded["ended_at"] -= 3600  # as if the studio looked an hour after the exit
    exit_file.write_text(json.dumps(recorded))
    done = jobs.reconcile_one(run)
    assert done["status"] == "finished"
    expected = datetime.fromtimestamp(recorded["ended_at"], timezone.utc)
    assert datetime.fromisoformat(done["ended_at"]) == expected.replace(microsecond=0)


def test_the_manager_settles_runs_in_the_background(jobs):
    run = ended_run(jobs, 0, final=True)
    reconciler = jobs.start_reconciler(every=0.1)
    assert jobs.start_reconciler() is reconciler  # one per manager
    wait_for(lambda: jobs.runs.get(run["id"])["status"] == "finished", timeout=60,
             what="the background reconcile")  # read from the store alone, no reconcile
    jobs.stop_reconciler()
    assert not reconciler.is_alive()


def test_a_failed_run_starts_its_error_with_the_trainers_fallback_line(jobs):
    traceback = "".join(f"  line {n} of a launcher's traceback\n" for n in range(40))
    cause = "PermissionError: [Errno 13] Permission denied: 'output/.step.tmp'"
    run = ended_run(jobs, 1, f"{run_files.FATAL_PREFIX}{cause}\n{traceback}")
    lines = jobs.reconcile_one(run)["error"].splitlines()
    assert lines[:2] == [cause, "exit status 1"]
    assert lines[-1] == "  line 39 of a launcher's traceback"


def test_a_failed_run_names_the_trainers_own_error_first(jobs, demo_model, tmp_path):
    missing = tmp_path / "no-model"
    run = jobs.submit("p", options(demo_model, model=str(missing)))
    failed = jobs.wait(run["id"], timeout=240)
    assert failed["status"] == "failed"
    # The trainer's own words (its error.json), not accelerate's CalledProcessError, come first.
    error = failed["error"]
    assert error.startswith(f"{missing} is not a usable Qwen-Image-Edit model folder")
    assert error.index("exit status") > error.index("Expected the diffusers layout")
