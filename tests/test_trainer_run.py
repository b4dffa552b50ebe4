"""The training program end to end on CPU with the demo model: real subprocesses, real
accelerate, DDP over gloo and DeepSpeed ZeRO-2."""
from __future__ import annotations

import json
import signal
import subprocess

import pytest
import torch

from studio.trainer import run_files
from tests.conftest import make_image
from tests.trainer_helpers import (ROOT, env, lora, make_dataset, max_abs, max_diff, run_trainer,
                                   trainer_cmd)
from tests.waiting import wait_for

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

STEPS = 8
# 1 process x 2 accumulation: the same global batch as 2 processes x 1.
BASE_ARGS = ["--max_steps", STEPS, "--save_steps", 3, "--gradient_accumulation_steps", 2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def baseline(demo_model, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "baseline"
    run_trainer(demo_model, dataset, out, *BASE_ARGS)
    return out


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_outputs_metrics_log_and_checkpoints(baseline):
    rows = read_metrics(baseline)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("epoch", "loss", "lr", "samples_per_s", "elapsed", "eta", "peak_mem_gb"):
        assert all(key in r for r in rows), key
    assert 0.1 < rows[-1]["peak_mem_gb"] < 8  # this process's peak RSS on the CPU
    assert rows[-1]["epoch"] == pytest.approx(STEPS * 2 / 4)   # 2 samples/step, 4 pairs
    assert rows[-1]["eta"] == 0 and rows[0]["eta"] > 0
    assert rows[0]["lr"] == pytest.approx(1e-3 / 3) and rows[-1]["lr"] == pytest.approx(1e-3)
    names = sorted(p.name for p in baseline.glob("*.safetensors"))
    assert names == ["final.safetensors", "step-000003.safetensors", "step-000006.safetensors",
                     "step-000008.safetensors"]
    assert "done: 8 steps" in (baseline / "train.log").read_text()
    assert json.loads((run_files.current_state(baseline) / "state.json").read_text())["step"] == STEPS


def test_every_checkpoint_loads_in_plain_diffusers(baseline, demo_model):
    from diffusers import QwenImageEditPipeline
    from peft.utils import get_peft_model_state_dict

    pipe = QwenImageEditPipeline.from_pretrained(demo_model)
    for i, path in enumerate(sorted(baseline.glob("*.safetensors"))):
        pipe.load_lora_weights(str(path), adapter_name=f"a{i}")
        loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=f"a{i}")
        saved = lora(path)
        assert len(loaded) == len(saved) > 0
        for k, v in saved.items():
            assert torch.allclose(loaded[k.removeprefix("diffusion_model.")], v), (path.name, k)
    assert max_abs(lora(baseline / "final.safetensors")) > 0  # it learned something


def test_two_process_ddp_matches_one_process(baseline, demo_model, dataset, tmp_path):
    out = tmp_path / "ddp"
    proc = run_trainer(demo_model, dataset, out, "--max_steps", STEPS, "--save_steps", 3,
                       launch=["--multi_gpu", "--num_processes", "2"],
                       extra_env={"ACCELERATE_USE_CPU": "1"})
    assert "rank 1 of 2" in proc.stderr  # two real ranks
    assert "rank 1 of 2" not in (out / "train.log").read_text()  # only rank 0 writes the log
    a, b = lora(out / "final.safetensors"), lora(baseline / "final.safetensors")
    assert max_diff(a, b) < 1e-4 * max_abs(b)
    assert read_metrics(out)[-1]["loss"] == pytest.approx(read_metrics(baseline)[-1]["loss"], rel=1e-4)


def test_two_nodes_from_generated_configs_match_one_process(baseline, demo_model, dataset, tmp_path):
    """Two "machines" on localhost, one process each, launched with generated configs;
    only machine 0 (rank 0) writes anything."""
    from studio.trainer.accelerate_config import make_config, write_config
    from tests.trainer_helpers import free_port

    port = free_port()
    procs = []
    for rank in (0, 1):
        config = write_config(tmp_path / f"node{rank}.yaml", make_config(
            "ddp", 2, "cpu", num_machines=2, machine_rank=rank, main_process_ip="127.0.0.1",
            main_process_port=port))
        cmd = trainer_cmd(demo_model, dataset, tmp_path / f"out{rank}", "--max_steps", STEPS,
                          launch=["--config_file", str(config), "--main_process_port", str(port)])
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(ACCELERATE_USE_CPU="1"),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert not (tmp_path / "out1").exists()
    a, b = lora(tmp_path / "out0" / "final.safetensors"), lora(baseline / "final.safetensors")
    assert max_diff(a, b) < 1e-4 * max_abs(b)


def test_two_process_deepspeed_zero2_matches_one_process(baseline, demo_model, dataset, tmp_path):
    from studio.trainer.accelerate_config import make_config, write_config

    # No clipping here so that the comparison with plain AdamW is exact.
    config = write_config(tmp_path / "zero2.yaml", make_config("zero2", 2, "cpu", gradient_clipping=None))
    out = tmp_path / "zero2"
    proc = run_trainer(demo_model, dataset, out, "--max_steps", STEPS, "--save_steps", 3,
                       launch=["--config_file", str(config)])
    assert "DeepSpeed ZeRO-2" in proc.stderr and "rank 1 of 2" in proc.stderr
    a, b = lora(out / "final.safetensors"), lora(baseline / "final.safetensors")
    # DeepSpeed reduces flattened fp32 buckets in its own order: equal up to rounding.
    assert max_diff(a, b) < 5e-3 * max_abs(b)
    assert (run_files.current_state(out) / "deepspeed").is_dir()


def stop_after_checkpoint(demo_model, dataset, out, *args, checkpoint: int) -> str:
    """Run the trainer and SIGTERM it while it waits after checkpoint `checkpoint`'s save (a
    fault point that the signal ends): it stops one step later, with a save there. Returns
    its stderr."""
    marker, log = out.with_name(f"{out.name}.marker"), out.with_name(f"{out.name}.stderr")
    with log.open("w") as stderr:  # a file, not an unread pipe that could fill and block it
        proc = subprocess.Popen(
            trainer_cmd(demo_model, dataset, out, *args), cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=stderr, env=env(STUDIO_FAULT_AT=f"after-saved:{checkpoint}",
                                   STUDIO_FAULT_ACTION="pause-until-stop",
                                   STUDIO_FAULT_MARKER=str(marker)))
        try:
            wait_for(lambda: marker.exists() or proc.poll() is not None,
                     what=f"the trainer after checkpoint {checkpoint}")
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=240)
        finally:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
    stopped_at = json.loads((run_files.current_state(out) / "state.json").read_text())["step"]
    assert stopped_at == checkpoint + 1
    return log.read_text()


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(baseline, demo_model, dataset, tmp_path):
    out = tmp_path / "stopped"
    stderr = stop_after_checkpoint(demo_model, dataset, out, *BASE_ARGS, checkpoint=3)
    assert "stopped by SIGTERM after step 4" in stderr
    assert (out / "step-000004.safetensors").is_file()

    run_trainer(demo_model, dataset, out, *BASE_ARGS, "--resume")
    assert [r["step"] for r in read_metrics(out)] == list(range(1, STEPS + 1))
    a, b = lora(out / "final.safetensors"), lora(baseline / "final.safetensors")
    assert max_diff(a, b) <= 1e-6 * max_abs(b)


def test_loss_falls_and_the_adapter_changes_the_output(demo_model, dataset, tmp_path):
    from diffusers import QwenImageEditPipeline, QwenImageTransformer2DModel

    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.lora_io import add_lora, load_into
    from studio.trainer.objective import sample_loss
    from studio.trainer.schedule import TrainingSchedule

    out = tmp_path / "fit"
    run_trainer(demo_model, dataset, out, "--max_steps", 40, "--learning_rate", "3e-3",
                "--use_gradient_checkpointing")
    encoded = _cached(dataset)  # the run filled the cache
    schedule = TrainingSchedule()

    def eval_loss(transformer):
        total = 0.0
        with torch.no_grad():
            for i, item in enumerate(encoded):
                for j in range(6):
                    g = torch.Generator().manual_seed(1000 * i + j)
                    total += sample_loss(transformer, item, schedule, g, "cpu", torch.float32)[0].item()
        return total / (len(encoded) * 6)

    transformer = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer")
    add_lora(transformer, 4, 4.0, DEFAULT_TARGETS)  # B = 0: the base model's loss
    before = eval_loss(transformer)
    load_into(transformer, out / "final.safetensors", 4, 4.0)
    after = eval_loss(transformer)
    assert after < 0.9 * before, (before, after)  # measured: 1.36 -> 1.08

    pipe = QwenImageEditPipeline.from_pretrained(demo_model)
    pipe.set_progress_bar_config(disable=True)

    def edit():
        return pipe(image=make_image(64, 64), prompt="Make the sky blue", num_inference_steps=2,
                    true_cfg_scale=1.0, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images

    base = edit()
    pipe.load_lora_weights(str(out / "final.safetensors"))
    adapted = edit()
    assert (adapted - base).abs().mean().item() > 1e-3


def _cached(dataset):
    from safetensors.torch import load_file

    files = sorted((dataset / ".studio_cache").rglob("*.safetensors"))
    assert len(files) >= 4
    return [load_file(str(f)) for f in files[:4]]


def test_nan_loss_stops_with_a_clear_error(demo_model, dataset, tmp_path):
    proc = run_trainer(demo_model, dataset, tmp_path / "nan", "--max_steps", 6,
                       "--learning_rate", "1e30", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "training diverged" in proc.stderr and "--learning_rate" in proc.stderr


def test_max_grad_norm_clips_the_gradient(demo_model, dataset, tmp_path):
    # One AdamW step from lora_B = 0: unclipped, each weight moves by about lr / 3 (the
    # ConstantLR warm-up); a gradient clipped to norm 1e-12 is far under Adam's eps, so the
    # step is tiny. A huge limit clips nothing: the same weights as no flag.
    runs = {}
    for name, flag in (("none", []), ("huge", ["--max_grad_norm", "1e9"]),
                       ("tiny", ["--max_grad_norm", "1e-12"])):
        run_trainer(demo_model, dataset, tmp_path / name, "--max_steps", 1, *flag)
        runs[name] = lora(tmp_path / name / "final.safetensors")
    assert max_diff(runs["huge"], runs["none"]) == 0
    assert max_abs(runs["none"]) == pytest.approx(1e-3 / 3, rel=0.05)
    assert max_abs(runs["tiny"]) < 1e-3 * max_abs(runs["none"])


def test_two_processes_share_the_encoding_and_fill_the_same_cache(demo_model, dataset, tmp_path):
    from safetensors.torch import load_file

    proc = run_trainer(demo_model, dataset, tmp_path / "ddp", "--max_steps", 1,
                       "--cache_path", tmp_path / "cache2",
                       launch=["--multi_gpu", "--num_processes", "2"],
                       extra_env={"ACCELERATE_USE_CPU": "1"})
    assert "rank 0 encoded its 2 pair(s)" in proc.stderr
    assert "rank 1 encoded its 2 pair(s)" in proc.stderr
    run_trainer(demo_model, dataset, tmp_path / "one", "--max_steps", 1,
                "--cache_path", tmp_path / "cache1")
    shared = {p.relative_to(tmp_path / "cache2"): p for p in (tmp_path / "cache2").rglob("*.safetensors")}
    alone = {p.relative_to(tmp_path / "cache1"): p for p in (tmp_path / "cache1").rglob("*.safetensors")}
    assert shared.keys() == alone.keys() and len(alone) == 4
    for name in alone:
        a, b = load_file(alone[name]), load_file(shared[name])
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_cosine_schedule_with_warm_up(demo_model, dataset, tmp_path):
    import math

    run_trainer(demo_model, dataset, tmp_path / "cos", "--max_steps", 6, "--lr_scheduler", "cosine",
                "--lr_warmup_steps", 2)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "cos")]
    # By hand: linear warm-up over 2 steps, then half a cosine over the remaining 4.
    expected = [0, 0.5] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx([1e-3 * f for f in expected])

    # Stopped and resumed, the schedule goes on where it was: the same lrs, the same LoRA.
    args = ["--max_steps", 6, "--lr_scheduler", "cosine", "--lr_warmup_steps", 2]
    # No --save_steps: a checkpoint at each epoch's end, step 4 (4 pairs, batch 1).
    stop_after_checkpoint(demo_model, dataset, tmp_path / "stopped", *args, checkpoint=4)
    run_trainer(demo_model, dataset, tmp_path / "stopped", *args, "--resume")
    assert [r["lr"] for r in read_metrics(tmp_path / "stopped")] == pytest.approx(lrs)
    a, b = lora(tmp_path / "stopped" / "final.safetensors"), lora(tmp_path / "cos" / "final.safetensors")
    assert max_diff(a, b) <= 1e-6 * max_abs(b)


def test_a_warm_up_needs_a_schedule_that_has_one(demo_model, dataset, tmp_path):
    proc = run_trainer(demo_model, dataset, tmp_path / "bad", "--lr_warmup_steps", 3, check=False)
    assert proc.returncode == 2 and "has no warm-up" in proc.stderr


def test_validation_loss_falls_leaves_training_untouched_and_survives_a_resume(demo_model, tmp_path):
    import shutil

    data = make_dataset(tmp_path / "ds")
    shutil.copy(data / "metadata_edit.csv", data / "metadata_validation.csv")  # held out = seen
    fit = ["--max_steps", 40, "--save_steps", 20, "--learning_rate", "3e-3", "--sample_steps", 0]
    run_trainer(demo_model, data, tmp_path / "val", *fit)
    rows = [json.loads(line) for line in (tmp_path / "val" / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 20, 40]  # before training, then each checkpoint
    assert rows[-1]["val_loss"] < 0.95 * rows[0]["val_loss"], rows

    # Scoring draws nothing from the training RNG: the same LoRA as without it.
    run_trainer(demo_model, data, tmp_path / "plain", *fit, "--no-validation_loss")
    assert not (tmp_path / "plain" / "validation.jsonl").exists()
    assert max_diff(lora(tmp_path / "val" / "final.safetensors"),
                    lora(tmp_path / "plain" / "final.safetensors")) == 0

    # Stopped and resumed: the baseline once, each checkpoint once.
    short = ["--max_steps", 6, "--save_steps", 3, "--sample_steps", 0]
    stop_after_checkpoint(demo_model, data, tmp_path / "resumed", *short, checkpoint=3)
    run_trainer(demo_model, data, tmp_path / "resumed", *short, "--resume")
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "resumed" / "validation.jsonl").read_text().splitlines()]
    assert steps == [0, 3, 6]
