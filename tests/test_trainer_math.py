"""The trainer's math and file formats, checked against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from studio.trainer.data import reference_edit_size, target_size
from studio.trainer.order import DataOrder
from studio.trainer.schedule import TrainingSchedule, add_noise, training_target, weighted_loss


def shifted(s, mu=0.8):
    return math.exp(mu) / (math.exp(mu) + (1 / s - 1))


def test_schedule_endpoints_and_a_middle_value_by_hand():
    sched = TrainingSchedule()
    assert len(sched) == 1000
    assert sched.sigmas[0].item() == pytest.approx(1.0, abs=1e-7)
    assert sched.sigmas[-1].item() == pytest.approx(0.02, abs=1e-7)  # shift_terminal
    # Index 500 is sigma 0.5 before shifting; e^0.8/(e^0.8+1) = 0.689974.
    # The last raw sigma is 1/1000; stretch factor = (1 - shifted(0.001)) / 0.98.
    stretch = (1 - shifted(0.001)) / 0.98
    expected = 1 - (1 - shifted(0.5)) / stretch
    assert expected == pytest.approx(0.695498, abs=1e-5)
    assert sched.sigmas[500].item() == pytest.approx(expected, abs=1e-6)
    assert sched.timesteps[500].item() == pytest.approx(1000 * expected, abs=1e-3)
    assert torch.all(sched.sigmas[1:] < sched.sigmas[:-1])  # strictly decreasing


def test_timestep_weights_are_a_gaussian_bump_with_mean_one():
    sched = TrainingSchedule()
    t = sched.timesteps.double()
    y = torch.exp(-2 * ((t - 500) / 1000) ** 2)
    y = y - y.min()
    assert sched.weights.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert sched.weights.min().item() == pytest.approx(0.0, abs=1e-7)  # the shifted minimum
    # Ratio of two weights is the ratio of the unnormalised bumps.
    i, j = 100, 700
    assert (sched.weights[i] / sched.weights[j]).item() == pytest.approx((y[i] / y[j]).item(), rel=1e-5)
    # The peak sits where the timestep is nearest 500.
    assert abs(sched.timesteps[int(sched.weights.argmax())].item() - 500) < 1.5


def test_lookup_rounds_the_timestep_like_the_reference_in_bf16():
    sched = TrainingSchedule()
    t32, s32, w32 = sched.lookup(123, torch.float32)
    assert (t32.item(), s32.item(), w32.item()) == (
        sched.timesteps[123].item(), sched.sigmas[123].item(), sched.weights[123].item())
    t16, s16, _ = sched.lookup(123, torch.bfloat16)
    assert t16.item() == sched.timesteps[123].to(torch.bfloat16).float().item()
    nearest = int(torch.argmin((sched.timesteps - t16).abs()))
    assert s16.item() == sched.sigmas[nearest].item()


def test_noising_target_and_weighted_loss_by_hand():
    x0 = torch.tensor([1.0, -2.0])
    eps = torch.tensor([0.5, 0.5])
    sigma = 0.25
    assert add_noise(x0, eps, sigma).tolist() == [0.75 * 1 + 0.25 * 0.5, 0.75 * -2 + 0.25 * 0.5]
    assert training_target(x0, eps).tolist() == [-0.5, 2.5]
    pred = torch.tensor([0.0, 2.0])
    # mse = ((0 + 0.5)^2 + (2 - 2.5)^2) / 2 = 0.25, times weight 1.5.
    assert weighted_loss(pred, training_target(x0, eps), 1.5).item() == pytest.approx(0.375)


def test_target_and_conditioning_sizes():
    assert target_size(64, 48, 1 << 20) == (64, 48)          # small: only floored to /16
    assert target_size(70, 50, 1 << 20) == (64, 48)
    w, h = target_size(2000, 1000, 1024 * 1024)               # scaled to <= max_pixels
    assert (w, h) == (1440, 720) and w * h <= 1024 * 1024
    assert target_size(999, 999, 100, fixed=(32, 48)) == (32, 48)
    assert reference_edit_size(64, 64) == (1024, 1024)        # ~1 MP whatever the input size
    assert reference_edit_size(1600, 900) == (1376, 768)      # 1365.3 -> 1376, 768 (multiples of 32)


def test_data_order_is_shared_by_processes_and_accumulation():
    single = DataOrder(5, 2, seed=3, world=1, accumulation=2)
    double = DataOrder(5, 2, seed=3, world=2, accumulation=1)
    for step in range(7):
        a = sorted(single.entry(step, m, 0) for m in range(2))
        b = sorted(double.entry(step, 0, r) for r in range(2))
        assert a == b
    # Each epoch visits every pair `repeat` times.
    epoch = [single.pair_index(e) for e in range(10)]
    assert sorted(epoch) == sorted(list(range(5)) * 2)
    assert single.total_steps(num_epochs=3, max_steps=None) == 15
    assert single.total_steps(num_epochs=3, max_steps=4) == 4
    g1, g2 = single.generator(7), single.generator(7)
    assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))


@pytest.fixture(scope="module")
def lora_transformer(demo_model):
    from diffusers import QwenImageTransformer2DModel

    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.lora_io import add_lora

    t = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer")
    add_lora(t, rank=4, alpha=8.0, targets=DEFAULT_TARGETS)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in t.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return t


def test_saved_keys_are_comfyui_style_with_alpha_folded(lora_transformer, tmp_path):
    from safetensors import safe_open

    from studio.trainer.lora_io import lora_parameters, save_lora

    path = save_lora(tmp_path / "x.safetensors", lora_transformer, rank=4, alpha=8.0)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        b = f.get_tensor("diffusion_model.transformer_blocks.0.attn.to_q.lora_B.weight")
    assert "diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert all(k.startswith("diffusion_model.transformer_blocks.") for k in keys)
    assert not any(".alpha" in k or ".default." in k for k in keys)
    # DiffSynth's rule: strip diffusion_model., the rest names a module of the transformer.
    modules = dict(lora_transformer.named_modules())
    for k in keys:
        module = k.removeprefix("diffusion_model.").rsplit(".lora_", 1)[0]
        assert module in modules
    raw_b = lora_parameters(lora_transformer)["transformer_blocks.0.attn.to_q.lora_B.weight"]
    assert torch.allclose(b, raw_b * 2.0)  # alpha / rank = 8 / 4


@pytest.mark.parametrize("style", ["diffusers", "diffsynth", "comfyui_down_up_alpha"])
def test_lora_checkpoint_reads_every_key_style(lora_transformer, tmp_path, style):
    from studio.trainer.lora_io import export_state, load_into

    comfy = export_state(lora_transformer, rank=4, alpha=8.0)  # full delta in B @ A
    if style == "diffusers":
        sd = {"transformer." + k.removeprefix("diffusion_model."): v for k, v in comfy.items()}
    elif style == "diffsynth":
        sd = {k.removeprefix("diffusion_model.").replace(".lora_A.", ".lora_A.default.")
              .replace(".lora_B.", ".lora_B.default."): v for k, v in comfy.items()}
    else:  # kohya/ComfyUI down/up with an alpha of 2 * rank: B stored at half the delta
        sd = {}
        for k, v in comfy.items():
            base = k.rsplit(".lora_", 1)[0]
            if ".lora_A." in k:
                sd[base + ".lora_down.weight"] = v
                sd[base + ".alpha"] = torch.tensor(8.0)
            else:
                sd[base + ".lora_up.weight"] = v / 2
    save_file(sd, str(tmp_path / "in.safetensors"))

    from diffusers import QwenImageTransformer2DModel

    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.lora_io import add_lora

    fresh = QwenImageTransformer2DModel.from_pretrained(lora_transformer.config._name_or_path)
    add_lora(fresh, rank=4, alpha=4.0, targets=DEFAULT_TARGETS)  # a different alpha here
    assert load_into(fresh, tmp_path / "in.safetensors", rank=4, alpha=4.0) == len(comfy)
    got = export_state(fresh, rank=4, alpha=4.0)
    for k, v in comfy.items():
        assert torch.allclose(got[k], v, atol=1e-6), k


def test_lora_checkpoint_with_wrong_rank_names_the_problem(lora_transformer, tmp_path):
    from diffusers import QwenImageTransformer2DModel

    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.lora_io import LoraFormatError, add_lora, load_into, save_lora

    path = save_lora(tmp_path / "r4.safetensors", lora_transformer, rank=4, alpha=8.0)
    other = QwenImageTransformer2DModel.from_pretrained(lora_transformer.config._name_or_path)
    add_lora(other, rank=2, alpha=2.0, targets=DEFAULT_TARGETS)
    with pytest.raises(LoraFormatError, match="lora_rank"):
        load_into(other, path, rank=2, alpha=2.0)


@pytest.mark.parametrize("style", ["diffusers", "diffsynth", "comfyui"])
def test_a_lora_to_start_from_is_checked_against_rank_and_targets(demo_model, tmp_path, style):
    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.lora_io import LoraFormatError, check_compatible
    from tests.lora_files import random_lora, save_lora

    path = save_lora(random_lora(demo_model, rank=4), tmp_path / "l.safetensors", style)
    check_compatible(path, 4, DEFAULT_TARGETS)  # fits: nothing raised
    with pytest.raises(LoraFormatError, match="rank 4; set the LoRA rank"):
        check_compatible(path, 8, DEFAULT_TARGETS)
    with pytest.raises(LoraFormatError, match="img_mlp.net.2|txt_mlp.net.2"):
        check_compatible(path, 4, "to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,to_out.0,to_add_out")
    with pytest.raises(LoraFormatError, match="not found"):
        check_compatible(tmp_path / "missing.safetensors", 4, DEFAULT_TARGETS)
