"""The option table (studio/trainer/options.py) is what the CLI, the Train tab, TrainOptions and
the trainer read: every option travels from `studio train` and from the tab to the trainer's
parsed arguments unchanged. And the two bugs the five copies caused stay fixed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio.cli import build_parser
from studio.cli.train import options as cli_options
from studio.jobs.launch import TrainOptions, trainer_args
from studio.trainer.args import check_args
from studio.trainer.options import LAUNCH, OPTIONS, RUN, studio_options
from studio.ui.train_form import NAMES, form_values, options_from

# Values the trainer accepts together; the rest are derived from each option's type below.
CHOSEN = {"model": "some/model", "report_to": "tensorboard", "lr_scheduler": "cosine",
          "keep_best_by": "ssim", "lora_target_modules": "to_q,to_k", "mixed_precision": "fp16",
          "device": "cuda", "quantize_base": "int8", "mode": "zero2", "launcher": "ssh",
          "hosts": "a,b", "main_ip": "10.0.0.1", "lora_checkpoint": "start.safetensors",
          "cann_set_env": "/opt/set_env.sh", "sample_lora_strength": 0.5}


def changed_value(opt, tmp_path: Path):
    """A value other than the option's default, of its type."""
    if opt.name in CHOSEN:
        return CHOSEN[opt.name]
    if opt.name == "sample_lora":
        (tmp_path / "fast.safetensors").write_bytes(b"")
        return str(tmp_path / "fast.safetensors")
    if opt.kind is bool:
        return not opt.default if opt.default is not None else False
    if opt.kind is int:
        return (opt.default or 0) + 3
    if opt.kind is float:
        return (opt.default or 0) + 0.25
    raise AssertionError(f"no test value for {opt.name}")


def cli_words(values: dict) -> list[str]:
    words = []
    for opt in studio_options():
        if opt.cli_flag is None or opt.name not in values:
            continue
        value = values[opt.name]
        if opt.kind is bool:
            words.append(opt.cli_flag if value else "--no-" + opt.cli_flag[2:])
        else:
            words += [opt.cli_flag, str(value)]
    return words


def typed_options(tmp_path) -> dict:
    return {o.name: changed_value(o, tmp_path) for o in studio_options()
            if o.kind not in (dict, list)}


@pytest.mark.parametrize("save_steps", [7, None], ids=["save_steps", "num_checkpoints"])
def test_every_option_reaches_the_trainer_unchanged_from_the_cli_and_from_the_tab(
        tmp_path, save_steps):
    wanted = {**typed_options(tmp_path), "save_steps": save_steps}
    assert all(wanted[n] != TrainOptions().as_dict()[n] for n in wanted if n != "save_steps")

    # The CLI refuses both cadences at once (below); the tab has both fields.
    loser = "num_checkpoints" if save_steps else "save_steps"
    given = {k: v for k, v in wanted.items() if k != loser}
    from_cli = cli_options(build_parser().parse_args(
        ["train", "--project", "p", *cli_words(given)]))
    from_tab = options_from(wanted["model"], "", form_values(wanted))
    for source, sent in ((from_cli, given), (from_tab, wanted)):
        stored = source.as_dict()
        assert {k: stored[k] for k in sent} == sent

        parsed = vars(check_args(trainer_args(source, "data", "out", resume=False)))
        for opt in OPTIONS:
            if opt.where != RUN:
                continue
            expected = wanted[opt.name]
            if opt.name == "num_checkpoints" and save_steps:  # save_steps wins; said in its help
                expected = None
            assert parsed[(opt.flag or opt.name)] == expected, opt.name


def test_the_table_names_each_flag_once_and_the_tab_shows_every_studio_option():
    trainer_flags = [o.trainer_flag for o in OPTIONS if o.where != LAUNCH]
    cli_flags = [f for o in studio_options() if o.cli_flag for f in (o.cli_flag, *o.aliases)]
    assert len(set(trainer_flags)) == len(trainer_flags) and len(set(cli_flags)) == len(cli_flags)
    typed = {o.name for o in studio_options() if o.kind not in (dict, list)} - {"model"}
    assert set(NAMES) == typed  # model has its own box beside the preset


def test_the_older_cli_spellings_still_work():
    args = build_parser().parse_args(
        ["train", "--project", "p", "--init-lora", "x.safetensors", "--sample-cfg", "2.5",
         "--lora-targets", "to_q", "--devices-per-node", "2", "--nodes", "2", "--node-rank", "1",
         "--no-gradient-checkpointing"])
    opts = cli_options(args)
    assert (opts.lora_checkpoint, opts.sample_true_cfg_scale, opts.lora_target_modules) == \
        ("x.safetensors", 2.5, "to_q")
    assert (opts.processes_per_node, opts.num_machines, opts.machine_rank) == (2, 2, 1)
    assert opts.use_gradient_checkpointing is False


def test_checkpoints_given_on_the_cli_win_over_the_presets_save_steps():
    for flag in ("--num-checkpoints", "--checkpoints"):
        opts = cli_options(build_parser().parse_args(["train", "--project", "p", flag, "5"]))
        args = check_args(trainer_args(opts, "data", "out", resume=False))
        assert (args.num_checkpoints, args.save_steps) == (5, None)
    both = build_parser().parse_args(["train", "--project", "p", "--checkpoints", "5",
                                      "--save-steps", "3"])
    with pytest.raises(SystemExit, match="--save-steps or --num-checkpoints, not both"):
        cli_options(both)


@pytest.mark.slow
def test_a_relative_model_path_is_resolved_at_submit_and_the_run_finishes(
        jobs, demo_model, tmp_path, monkeypatch):
    from studio.jobs.presets import preset_options

    os.symlink(demo_model, tmp_path / "mymodel")
    monkeypatch.chdir(tmp_path)
    run = jobs.submit("p", preset_options("Demo on CPU", model="mymodel", max_steps=1,
                                          sample_steps=0))
    assert run["config"]["model"] == str((tmp_path / "mymodel").resolve())
    done = jobs.wait(run["id"], timeout=300)
    assert done["status"] == "finished", done["error"]
