"""Checkpoint retention (--keep_checkpoints), the checkpoint cadence (--num_checkpoints) and the
experiment trackers (--report_to), issue 17 part B.

The rule tests build run folders by hand (no torch); the runs are the real trainer on the demo
model, forked from one server as in test_fault_injection.py."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from studio.trainer import retention, run_files, scoreboard, steplog
from studio.trainer.args import check_args
from studio.trainer.tracker_names import tracker_problem
from tests.test_fault_injection import dataset, forks, trainer_argv  # noqa: F401 (fixtures)


def fake_run(out: Path, losses: dict[int, float], state: int | None = None) -> Path:
    """A run folder with a LoRA file per step, validation rows, final.safetensors and the
    resume state of step `state` (a file's bytes are its step)."""
    out.mkdir(parents=True)
    for step in losses:
        run_files.lora_path(out, step).write_text(str(step))
        steplog.write(out / run_files.VALIDATION, {"step": step, "val_loss": losses[step]})
    (out / run_files.FINAL).write_text("final")
    if state is not None:
        folder = run_files.state_dir(out, state)
        folder.mkdir(parents=True)
        (folder / run_files.STATE).write_text("{}")
        run_files.point_to(out, folder)
    return out


def test_retention_keeps_the_last_n_and_the_best_and_never_final_or_the_state(tmp_path):
    out = fake_run(tmp_path / "run", {2: 0.9, 4: 0.3, 6: 0.8, 8: 0.7, 10: 0.6}, state=10)
    assert retention.prune(out, 2) == [2, 6]
    assert sorted(run_files.checkpoint_steps(out)) == [4, 8, 10]  # best 4, last two 8 and 10
    assert (out / run_files.FINAL).read_text() == "final"
    assert run_files.current_state(out) == run_files.state_dir(out, 10)


def test_retention_keeps_the_resume_states_file_and_everything_by_default(tmp_path):
    out = fake_run(tmp_path / "run", {2: 0.1, 4: 0.5, 6: 0.4}, state=4)
    assert retention.prune(out, None) == []  # the default keeps every file, as before
    assert sorted(run_files.checkpoint_steps(out)) == [2, 4, 6]
    # A state older than the newest file (a resume redoing steps): its file stays too.
    assert retention.prune(out, 1) == []
    assert sorted(run_files.checkpoint_steps(out)) == [2, 4, 6]


def test_the_best_chooser_is_replaceable_and_validation_free_runs_keep_the_last(tmp_path):
    out = fake_run(tmp_path / "run", {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert retention.prune(out, 1, choose=lambda output, steps: 2) == [1, 3]
    assert sorted(run_files.checkpoint_steps(out)) == [2, 4]
    bare = tmp_path / "bare"
    bare.mkdir()
    for step in (1, 2, 3):
        run_files.lora_path(bare, step).write_text("x")
    assert retention.best_step(bare, [1, 2, 3]) is None
    assert retention.prune(bare, 2) == [1]


def test_retention_can_keep_the_best_by_a_scoreboard_metric(tmp_path):
    """--keep_best_by ssim: the checkpoint whose sample edits scored the highest mean SSIM
    stays, though another has the lowest validation loss; unscored steps are never best."""
    out = fake_run(tmp_path / "run", {2: 0.9, 4: 0.1, 6: 0.8, 8: 0.7, 10: 0.6})
    for step, ssims in {2: [0.5, 0.7], 4: [0.2, 0.3], 6: [0.9, 0.8], 8: [0.1, 0.1]}.items():
        steplog.write(out / scoreboard.FILE, {"step": step, "pairs": [
            {"sample_id": str(i), "ssim": v} for i, v in enumerate(ssims)]})
    assert retention.prune(out, 1, retention.best_by("ssim")) == [2, 4, 8]
    assert sorted(run_files.checkpoint_steps(out)) == [6, 10]
    # pixel_shift: closer to 0 is better; no step has it, so only the last stays.
    again = fake_run(tmp_path / "again", {2: 0.3, 4: 0.2})
    assert retention.best_by("pixel_shift")(again, [2, 4]) is None
    assert retention.best_by()(again, [2, 4]) == 4  # the validation loss


def test_a_tracker_whose_library_is_missing_is_refused_before_the_run(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "mlflow", "trackio") else real(name, *a))
    for name in ("wandb", "mlflow", "trackio"):
        message = tracker_problem(name)
        assert message.startswith(f"--report_to {name} needs the {name} library") and \
            f"pip install {name}" in message
        with pytest.raises(ValueError, match=f"needs the {name} library"):
            check_args(["--dataset_base_path", "d", "--report_to", name])
    assert tracker_problem("tensorboard") is None and tracker_problem("none") is None
    with pytest.raises(ValueError, match="not both"):
        check_args(["--dataset_base_path", "d", "--save_steps", "2", "--num_checkpoints", "3"])
    with pytest.raises(ValueError, match="at least 1"):
        check_args(["--dataset_base_path", "d", "--keep_checkpoints", "0"])


# -- real runs --------------------------------------------------------------------------------

STEPS = 8
RUN = ["--max_steps", STEPS, "--num_checkpoints", 4, "--keep_checkpoints", 1,
       "--sample_steps", 0, "--report_to", "tensorboard"]


@pytest.fixture(scope="module")
def stopped_and_resumed(forks, demo_model, dataset, tmp_path_factory):
    """A run killed after step 6's save, before its validation loss and pruning, then resumed.
    The demo model's validation loss falls at every checkpoint, so the best would always be the
    last: while it is stopped, step 4's row is halved to make an older checkpoint the best.
    Returns (output, LoRA steps before the resume, step 4's real validation loss)."""
    out = tmp_path_factory.mktemp("runs") / "kept"
    code = forks.train(demo_model, dataset, out, *RUN, STUDIO_FAULT_AT="validation:6")
    assert code == -signal.SIGKILL, out.with_name("kept.run.log").read_text()[-3000:]
    before = sorted(run_files.checkpoint_steps(out))
    rows = steplog.read(out / run_files.VALIDATION)
    real = next(r["val_loss"] for r in rows if r["step"] == 4)
    (out / run_files.VALIDATION).write_text("".join(
        json.dumps({**r, "val_loss": r["val_loss"] / 2 if r["step"] == 4 else r["val_loss"]}) + "\n"
        for r in rows))
    code = forks.train(demo_model, dataset, out, *RUN, "--resume", log="resume")
    assert code == 0, out.with_name("kept.resume.log").read_text()[-3000:]
    return out, before, real


def expected_files(out: Path, saved: list[int], keep_last: int) -> set[int]:
    """The promise, computed from validation.jsonl: the last N saved steps and the one with
    the lowest validation loss."""
    losses = {r["step"]: r["val_loss"] for r in steplog.read(out / run_files.VALIDATION)}
    scored = [s for s in saved if s in losses]
    return set(saved[-keep_last:]) | {min(scored, key=lambda s: (losses[s], -s))}


@pytest.mark.slow
def test_retention_keeps_exactly_its_promise_across_a_stop_and_resume(stopped_and_resumed):
    out, before, _ = stopped_and_resumed
    # --num_checkpoints 4 over 8 steps: a save every 2 steps. Before the resume: the last of
    # 2 and 4 and the better of them, and 6, whose kill came before its pruning.
    assert before == [4, 6]
    assert [r["step"] for r in steplog.read(out / run_files.VALIDATION)] == [0, 2, 4, 6, 8]
    assert expected_files(out, [2, 4, 6, 8], 1) == {4, 8}
    assert set(run_files.checkpoint_steps(out)) == {4, 8}
    assert (out / run_files.FINAL).is_file() and run_files.current_state(out) is not None
    log = out.with_name("kept.resume.log").read_text()
    assert "checkpoints: every 2 steps, keeping the last 1 and the best by validation loss" in log


@pytest.mark.slow
def test_a_graceful_stop_checkpoint_counts_as_one_of_the_last(forks, demo_model, dataset, tmp_path):
    """SIGTERM while the trainer waits after step 4's save: it stops after step 5 with a save
    there (a checkpoint like the others), is resumed, and ends with the promised files."""
    out, marker = tmp_path / "stop", tmp_path / "marker"
    run = ["--max_steps", STEPS, "--num_checkpoints", 4, "--keep_checkpoints", 2,
           "--sample_steps", 0]
    forks.start(tmp_path / "stop.log", trainer_argv(demo_model, dataset, out, *run),
                STUDIO_FAULT_AT="after-saved:4", STUDIO_FAULT_ACTION="pause",
                STUDIO_FAULT_MARKER=str(marker))
    trainer = forks.paused(marker)
    # Sent before the release: the trainer's handler has taken it when the pause ends.
    os.kill(trainer, signal.SIGTERM)
    marker.unlink()
    assert forks.wait() == 0, (tmp_path / "stop.log").read_text()[-3000:]
    assert "stopped by SIGTERM after step 5" in (tmp_path / "stop.log").read_text()
    assert set(run_files.checkpoint_steps(out)) == expected_files(out, [2, 4, 5], 2)
    code = forks.train(demo_model, dataset, out, *run, "--resume", log="resume")
    assert code == 0, out.with_name("stop.resume.log").read_text()[-3000:]
    # The stop's save at 5 gets no validation loss (it is not a scored step), so it is never
    # the best: the last two and the best of the scored ones remain.
    assert [r["step"] for r in steplog.read(out / run_files.VALIDATION)] == [0, 2, 4, 6, 8]
    assert set(run_files.checkpoint_steps(out)) == expected_files(out, [2, 4, 5, 6, 8], 2)
    assert run_files.current_state(out) is not None and (out / run_files.FINAL).is_file()


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_loss_of_every_step(stopped_and_resumed):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    out, _, real = stopped_and_resumed
    events = list((out / run_files.TENSORBOARD).rglob("events.out.tfevents.*"))
    assert len(events) >= 2  # one per start: the killed one and the resumed one
    mux = EventMultiplexer().AddRunsFromDirectory(str(out / run_files.TENSORBOARD)).Reload()
    logged: dict[str, dict[int, float]] = {}
    for run in mux.Runs():
        for tag in mux.GetAccumulator(run).Tags()["scalars"]:
            for event in mux.Scalars(run, tag):
                logged.setdefault(tag, {})[event.step] = event.value
    metrics = {r["step"]: r for r in steplog.read(out / run_files.METRICS)}
    assert sorted(logged["train/loss"]) == list(range(1, STEPS + 1))
    for step, value in logged["train/loss"].items():
        assert value == pytest.approx(metrics[step]["loss"], rel=1e-6)  # float32 in the file
        assert logged["train/lr"][step] == pytest.approx(metrics[step]["lr"], rel=1e-6)
    validation = {r["step"]: r["val_loss"] for r in steplog.read(out / run_files.VALIDATION)}
    validation[4] = real  # the fixture's change came after it was logged
    assert logged["validation/loss"] == pytest.approx(validation, rel=1e-6)
    assert set(logged) >= {"train/samples_per_s", "train/peak_mem_gb"}


@pytest.mark.slow
def test_sample_edits_reach_tensorboard_as_images(forks, demo_model, dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "images"
    code = forks.train(demo_model, dataset, out, "--max_steps", 2, "--save_steps", 2,
                       "--sample_inference_steps", 2, "--report_to", "tensorboard",
                       "--no-validation_loss")
    assert code == 0, out.with_name("images.run.log").read_text()[-3000:]
    folder = next(p.parent for p in (out / run_files.TENSORBOARD).rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    assert acc.Tags()["images"] == ["samples/v"]
    (image,) = acc.Images("samples/v")
    sample = json.loads((out / "samples/step-000002/samples.json").read_text())["samples"][0]
    from PIL import Image

    assert image.step == 2 and (image.width, image.height) == Image.open(sample["output"]).size
