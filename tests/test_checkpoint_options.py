"""The job manager's and the Train tab's side of issue 17 part B: the default checkpoint
cadence, retention's pruned files leaving the pickers, and a tracker without its library
refused at submit. No training here (the runs: tests/test_retention_trackers.py)."""
from __future__ import annotations

import importlib.util

import pytest

from studio.jobs.launch import TrainOptions, trainer_args
from studio.jobs.presets import TRAIN_PRESETS
from studio.trainer import run_files
from studio.trainer.args import check_args
from studio.ui.common import adapter_choices
from studio.ui.train_form import NAMES, form_values, options_from, preset_values


def test_the_train_tab_spreads_ten_checkpoints_over_a_run_without_save_steps():
    values = preset_values("Demo on CPU")
    names = NAMES
    assert values[names.index("num_checkpoints")] == 10
    values[names.index("save_steps")] = 0  # "0 = use 'Checkpoints per run'"
    opts = options_from("demo", "", values)
    args = check_args(trainer_args(opts, "data", "out", resume=False))
    assert (args.save_steps, args.num_checkpoints, args.keep_checkpoints) == (None, 10, None)
    assert args.report_to == "none"
    # A preset's own save_steps still wins; 0 checkpoints per run means the epoch ends.
    assert check_args(trainer_args(TrainOptions(**TRAIN_PRESETS["One 80 GB GPU"]), "d", "o",
                                   resume=False)).save_steps == 250
    values[names.index("num_checkpoints")] = 0
    values[names.index("keep_checkpoints")] = 3
    args = check_args(trainer_args(options_from("demo", "", values), "d", "o", resume=False))
    assert (args.save_steps, args.num_checkpoints, args.keep_checkpoints) == (None, None, 3)


def test_a_run_stored_before_the_cadence_option_keeps_its_epoch_end_saves():
    stored = {k: v for k, v in TrainOptions(save_steps=None).as_dict().items()
              if k not in ("num_checkpoints", "keep_checkpoints", "report_to")}
    opts = TrainOptions.from_dict(stored)
    assert opts.num_checkpoints is None and "--num_checkpoints" not in trainer_args(
        opts, "d", "o", resume=True)
    assert form_values(TrainOptions().as_dict())[NAMES.index("keep_checkpoints")] == 0


def test_a_tracker_without_its_library_is_refused_at_submit_and_queues_nothing(jobs, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    opts = TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS["Demo on CPU"],
                                   "report_to": "wandb"})
    with pytest.raises(ValueError, match="--report_to wandb needs the wandb library.*pip install wandb"):
        jobs.submit("p", opts)
    assert jobs.runs.list("p") == []


def test_checkpoints_that_retention_deleted_leave_the_pickers(jobs):
    run = jobs.runs.create("p", "kept", "", TrainOptions().as_dict(), "cpu")
    folder = jobs.run_dir("p", run["id"])
    output = folder / "output"
    output.mkdir(parents=True)
    for step in (2, 4, 6):
        run_files.lora_path(output, step).write_bytes(b"lora")
    run = jobs.runs.update(run["id"], status="finished", run_dir=str(folder))
    jobs.reconcile_one(run, dispatch=False)
    steps = lambda: [r["step"] for r in jobs.store.run_checkpoints("p")[run["id"]]]  # noqa: E731
    assert steps() == [2, 4, 6]
    run_files.lora_path(output, 2).unlink()  # as retention.prune does
    run_files.lora_path(output, 6).unlink()
    jobs.reconcile_one(run, dispatch=False)
    assert steps() == [4]
    assert [label for label, _ in adapter_choices(jobs.store, "p")] == \
        [f"kept #{run['id']} · step 4 (#{jobs.store.run_checkpoints('p')[run['id']][0]['id']})"]
