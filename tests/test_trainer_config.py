"""Arguments and accelerate config generation."""
from __future__ import annotations

import pytest
import yaml

from studio.trainer.accelerate_config import CONFIG_PRESETS, main, make_config
from studio.engine.lora_targets import DEFAULT_TARGETS
from studio.trainer.args import parse_args


def test_defaults_follow_the_reference_recipe():
    a = parse_args(["--dataset_base_path", "x"])
    assert (a.lora_rank, a.lora_alpha, a.learning_rate, a.weight_decay, a.max_pixels) == (
        32, 32.0, 1e-4, 0.01, 1048576)
    assert a.lora_target_modules == DEFAULT_TARGETS and a.edit_image_auto_resize
    assert parse_args(["--dataset_base_path", "x", "--lora_rank", "8"]).lora_alpha == 8.0
    with pytest.raises(SystemExit):
        parse_args(["--dataset_base_path", "x", "--height", "512"])


def test_seed_preset_is_eight_card_zero2_bf16_with_clipping(capsys):
    assert main(["--preset", "ascend-8-zero2"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["distributed_type"] == "DEEPSPEED" and config["num_processes"] == 8
    assert config["mixed_precision"] == "bf16"
    assert config["deepspeed_config"]["zero_stage"] == 2
    assert config["deepspeed_config"]["gradient_clipping"] == 1.0
    # The rest of the recipe's ZeRO-2 block, and NPU-specific fields of the preset itself.
    assert config["deepspeed_config"]["offload_optimizer_device"] == "none"
    assert config["deepspeed_config"]["offload_param_device"] == "none"
    assert config["deepspeed_config"]["gradient_accumulation_steps"] == 1
    assert config["deepspeed_config"]["zero3_init_flag"] is False
    assert (config["num_machines"], config["machine_rank"], config["use_cpu"]) == (1, 0, False)
    preset = CONFIG_PRESETS["ascend-8-zero2"]
    assert (preset["mode"], preset["device"], preset["num_processes"]) == ("zero2", "npu", 8)
    assert (preset["mixed_precision"], preset["gradient_clipping"]) == ("bf16", 1.0)
    # The CUDA twin differs only in the device; the CPU preset is two plain DDP processes.
    assert {**CONFIG_PRESETS["cuda-8-zero2"], "device": "npu"} == preset
    cpu = make_config(**CONFIG_PRESETS["cpu-2-ddp"])
    assert (cpu["distributed_type"], cpu["num_processes"], cpu["mixed_precision"]) == ("MULTI_GPU", 2, "no")
    assert "deepspeed_config" not in cpu


def test_multi_node_and_ddp_fields(tmp_path):
    c = make_config("ddp", num_processes=16, device="cuda", num_machines=2, machine_rank=1,
                    main_process_ip="10.0.0.1", main_process_port=29501)
    assert (c["distributed_type"], c["num_machines"], c["machine_rank"]) == ("MULTI_GPU", 2, 1)
    assert (c["main_process_ip"], c["main_process_port"]) == ("10.0.0.1", 29501)
    assert make_config("ddp", 8, "npu")["distributed_type"] == "MULTI_NPU"
    single = make_config("single", 1, "cpu")
    assert single["distributed_type"] == "NO" and single["use_cpu"] and single["mixed_precision"] == "no"
    z = make_config("zero2", 16, "npu", num_machines=2, machine_rank=0, main_process_ip="10.0.0.1")
    assert z["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    with pytest.raises(ValueError, match="machine_rank 2"):
        make_config("ddp", 16, "cuda", num_machines=2, machine_rank=2, main_process_ip="h")
    with pytest.raises(ValueError, match="main_process_ip"):
        make_config("ddp", 16, "cuda", num_machines=2)
    with pytest.raises(ValueError, match="evenly"):
        make_config("ddp", 3, "cuda", num_machines=2, main_process_ip="h")
    out = tmp_path / "a.yaml"
    assert main(["--mode", "zero2", "--num_processes", "4", "--offload_optimizer", "cpu",
                 "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["deepspeed_config"]["offload_optimizer_device"] == "cpu"


def test_out_of_memory_is_recognised_and_the_message_says_what_to_change():
    import torch

    from studio.trainer.args import parse_args
    from studio.trainer.loop import _is_oom, _oom_message

    assert _is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_oom(RuntimeError("NPU out of memory. Tried to allocate 1.00 GiB"))
    assert not _is_oom(RuntimeError("shape mismatch"))
    message = _oom_message(parse_args(["--dataset_base_path", "x", "--max_pixels", "1048576"]))
    for hint in ("--max_pixels (now 1048576", "--use_gradient_checkpointing", "ZeRO-2", "offload"):
        assert hint in message


def test_sample_edit_options_reach_the_trainer_and_bad_ones_are_refused_before_queueing(
        jobs, demo_model):
    from studio.cli import build_parser
    from studio.cli.train import options
    from studio.jobs.launch import TrainOptions, trainer_args

    cli = build_parser().parse_args(["train", "--project", "p", "--sample-steps", "0",
                                     "--max-samples", "2", "--sample-cfg", "2.5"])
    opts = options(cli)
    args = parse_args(trainer_args(opts, "data", "out", resume=False))
    assert (args.sample_steps, args.max_samples, args.sample_true_cfg_scale,
            args.sample_inference_steps) == (0, 2, 2.5, 8)
    # Unset: the trainer's default (a sample edit at each checkpoint).
    assert parse_args(trainer_args(TrainOptions(), "data", "out", resume=False)).sample_steps is None

    bad = {**options(cli).as_dict(), "model": str(demo_model), "sample_inference_steps": 1}
    with pytest.raises(ValueError, match="sample_inference_steps must be at least 2"):
        jobs.submit("p", TrainOptions.from_dict(bad))
    assert jobs.runs.list() == []


def test_gradient_clipping_reaches_the_trainer_or_deepspeed():
    from studio.jobs.launch import TrainOptions, accelerate_config, trainer_args

    plain, clipped = TrainOptions(), TrainOptions(max_grad_norm=0.5)
    assert parse_args(trainer_args(plain, "d", "o", resume=False)).max_grad_norm is None
    assert parse_args(trainer_args(clipped, "d", "o", resume=False)).max_grad_norm == 0.5
    zero2 = dict(device="cuda", mode="zero2", processes_per_node=8)
    ds = lambda opts: accelerate_config(opts)["deepspeed_config"]["gradient_clipping"]  # noqa: E731
    assert ds(TrainOptions(**zero2)) == 1.0  # the recipe's
    assert ds(TrainOptions(**zero2, max_grad_norm=0.5)) == 0.5


def test_lr_schedule_options_reach_the_trainer_and_a_misfit_is_refused(jobs, demo_model):
    from studio.cli import build_parser
    from studio.cli.train import options
    from studio.jobs.launch import TrainOptions, trainer_args

    cli = build_parser().parse_args(["train", "--project", "p", "--lr-scheduler", "cosine",
                                     "--lr-warmup-steps", "50"])
    args = parse_args(trainer_args(options(cli), "d", "o", resume=False))
    assert (args.lr_scheduler, args.lr_warmup_steps) == ("cosine", 50)
    assert "--lr_scheduler" not in trainer_args(TrainOptions(), "d", "o", resume=False)
    bad = {**TrainOptions().as_dict(), "model": str(demo_model), "lr_warmup_steps": 5}
    with pytest.raises(ValueError, match="has no warm-up"):
        jobs.submit("p", TrainOptions.from_dict(bad))
