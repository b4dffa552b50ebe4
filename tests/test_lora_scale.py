"""A LoRA trained with alpha != rank applies the same delta everywhere it is read.

The trainer's peft adapter scales B @ A by alpha / rank; its saved file folds that scale into
lora_B (studio/trainer/lora_io.py). So plain diffusers (`load_lora_weights`, scale 1 for a file
without `.alpha` keys) must give the trainer's output, and not the output of alpha = rank.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from studio.engine.lora_targets import DEFAULT_TARGETS
from studio.trainer.lora_io import add_lora, load_into, lora_parameters, save_lora

RANK = 4
MODULE = "transformer_blocks.0.attn.to_q"  # one layer checked as a matrix, not only end to end


def fresh(demo_model):
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer").eval()


def lora_model(demo_model, alpha: float):
    """The trainer's model with its LoRA at fixed random values (lora_B non-zero), the same
    values whatever alpha, so that only the alpha / rank scale differs between two of them."""
    model = fresh(demo_model)
    add_lora(model, RANK, alpha, DEFAULT_TARGETS)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, p in sorted(lora_parameters(model).items()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def inputs():
    g = torch.Generator().manual_seed(5)
    return dict(hidden_states=torch.randn(1, 12, 64, generator=g),  # 6 target + 6 condition tokens
                encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
                timestep=torch.tensor([0.6]), img_shapes=[[(1, 2, 3), (1, 3, 2)]], return_dict=False)


@torch.no_grad()
def output(model):
    return model(**inputs())[0]


def plain_diffusers(demo_model, path):
    from diffusers import QwenImageEditPipeline

    pipe = QwenImageEditPipeline.from_pretrained(demo_model, dtype=torch.float32)
    pipe.load_lora_weights(str(path))
    return pipe.transformer.eval()


def layer_delta(model, name: str = MODULE) -> torch.Tensor:
    """The weight delta a peft LoRA layer adds (scaling * B @ A, summed over active adapters)."""
    layer = model.get_submodule(name)
    return sum(layer.get_delta_weight(a) for a in layer.active_adapters)


@pytest.mark.parametrize("alpha", [8.0, 2.0])
def test_alpha_other_than_rank_gives_the_trainers_output_in_plain_diffusers(demo_model, tmp_path, alpha):
    model = lora_model(demo_model, alpha)
    params = lora_parameters(model)
    a, b = params[f"{MODULE}.lora_A.weight"], params[f"{MODULE}.lora_B.weight"]
    expected_delta = (alpha / RANK) * (b @ a).detach()  # peft's LoRA: W + (alpha / r) B A
    assert torch.allclose(layer_delta(model), expected_delta, atol=1e-7)

    path = save_lora(tmp_path / "lora.safetensors", model, RANK, alpha)
    saved = load_file(str(path))
    assert torch.allclose(saved[f"diffusion_model.{MODULE}.lora_B.weight"], (alpha / RANK) * b.detach())
    assert torch.equal(saved[f"diffusion_model.{MODULE}.lora_A.weight"], a.detach())

    ours = output(model)
    loaded = plain_diffusers(demo_model, path)
    assert torch.allclose(layer_delta(loaded), expected_delta, atol=1e-7)
    theirs = output(loaded)
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()

    # A scale of 1 (alpha taken as rank) and no LoRA at all are both far from that output,
    # so a file that lost or doubled the scale would fail the comparison above.
    unit = output(lora_model(demo_model, float(RANK)))
    base = output(fresh(demo_model))
    assert (theirs - unit).abs().max() > 1e-2
    assert (theirs - base).abs().max() > 1e-2

    # The trainer's own resume path reads the file back to the same adapter.
    resumed = fresh(demo_model)
    add_lora(resumed, RANK, alpha, DEFAULT_TARGETS)
    load_into(resumed, path, RANK, alpha)
    assert torch.allclose(output(resumed), ours, atol=1e-6)


def test_a_file_with_alpha_keys_reads_the_same_in_the_trainer_and_in_diffusers(demo_model, tmp_path):
    """ComfyUI/kohya files keep B unscaled and store `.alpha` per module instead."""
    alpha = 8.0
    model = lora_model(demo_model, alpha)
    state = {}
    for name, p in lora_parameters(model).items():
        state[f"diffusion_model.{name}"] = p.detach().clone().contiguous()
        if ".lora_A." in name:
            state[f"diffusion_model.{name.split('.lora_A.')[0]}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "with_alpha.safetensors"
    save_file(state, str(path))
    ours = output(model)

    resumed = fresh(demo_model)
    add_lora(resumed, RANK, alpha, DEFAULT_TARGETS)
    load_into(resumed, path, RANK, alpha)
    assert torch.allclose(output(resumed), ours, atol=1e-6)
    theirs = output(plain_diffusers(demo_model, path))
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()
    assert (theirs - output(lora_model(demo_model, float(RANK)))).abs().max() > 1e-2
