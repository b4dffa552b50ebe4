"""The training math held to values computed here, from the reference's published formulas,
without calling the studio's code for the expected side.

Reference: DiffSynth-Studio 084bc2f, diffsynth/schedulers/flow_match.py (FlowMatchScheduler,
`set_timesteps(1000, training=True)` as diffsynth/trainers/utils.py calls it), configured in
diffsynth/pipelines/qwen_image.py with sigma_min=0, sigma_max=1, extra_one_step=True,
exponential_shift=True, exponential_shift_mu=0.8, shift_terminal=0.02; the loss is
QwenImagePipeline.training_loss and the token layout model_fn_qwen_image. The current
DiffSynth-Studio (diffsynth/diffusion/flow_match.py, template "Qwen-Image",
set_timesteps_qwen_image and set_training_weight) has the same formulas.
"""
from __future__ import annotations

import math

import pytest
import torch

from studio.trainer.objective import sample_loss
from studio.trainer.schedule import TrainingSchedule

N = 1000
MU = 0.8
TERMINAL = 0.02
INDICES = (0, 1, 137, 500, 999)
# Tolerances: the reference itself computes in float32 (its sigmas are off the exact values by
# up to 1.4e-7, its weights by up to 9e-7: y - min(y) cancels digits near the minimum), and so
# does the studio's schedule. A wrong formula is off by orders of magnitude more.
SIGMA_TOL = 2e-7
WEIGHT_TOL = dict(rel=1e-5, abs=1e-6)


def reference_sigmas() -> list[float]:
    # extra_one_step: linspace(sigma_max=1, sigma_min=0, N + 1)[:-1] -> 1, 0.999, ..., 0.001.
    raw = [1 - i / N for i in range(N)]
    shifted = [math.exp(MU) / (math.exp(MU) + (1 / s - 1)) for s in raw]
    one_minus = [1 - s for s in shifted]
    scale = one_minus[-1] / (1 - TERMINAL)
    return [1 - om / scale for om in one_minus]


def reference_weights(sigmas: list[float]) -> list[float]:
    # x = timesteps = sigma * 1000; y = exp(-2 ((x - N/2) / N)^2); (y - min y) scaled to sum N.
    y = [math.exp(-2 * ((s * N - N / 2) / N) ** 2) for s in sigmas]
    low = min(y)
    total = sum(v - low for v in y)
    return [(v - low) * (N / total) for v in y]


SIGMAS = reference_sigmas()
WEIGHTS = reference_weights(SIGMAS)


def test_the_reference_formulas_give_the_known_anchor_values():
    """The helpers above, against numbers worked out separately (so a typo in them shows)."""
    assert SIGMAS[0] == 1.0 and SIGMAS[-1] == pytest.approx(0.02, abs=1e-15)
    # index 500: raw 0.5 -> e^0.8/(e^0.8+1) = 0.68997448; the last raw sigma 0.001 -> 0.00222280,
    # so the stretch divides 1 - sigma' by (1 - 0.00222280)/0.98 = 1.01813999 -> 0.69549814
    assert SIGMAS[500] == pytest.approx(0.69549814, abs=1e-8)
    assert sum(WEIGHTS) / N == pytest.approx(1.0, abs=1e-12)
    assert WEIGHTS[0] == 0.0  # t = 1000 is the farthest from 500, so the shifted minimum
    assert max(WEIGHTS) == pytest.approx(WEIGHTS[min(range(N), key=lambda i: abs(SIGMAS[i] - 0.5))])


@pytest.mark.parametrize("index", INDICES)
def test_schedule_matches_the_reference_sigmas_timesteps_and_weights(index):
    sched = TrainingSchedule()
    assert len(sched) == N
    assert sched.sigmas[index].item() == pytest.approx(SIGMAS[index], abs=SIGMA_TOL)
    assert sched.timesteps[index].item() == pytest.approx(N * SIGMAS[index], abs=2e-4)
    assert sched.weights[index].item() == pytest.approx(WEIGHTS[index], **WEIGHT_TOL)
    t, sigma, weight = sched.lookup(index, torch.float32)
    assert (t.item(), sigma.item()) == pytest.approx((N * SIGMAS[index], SIGMAS[index]), abs=2e-4)
    assert weight.item() == pytest.approx(WEIGHTS[index], **WEIGHT_TOL)


def test_the_whole_schedule_matches_the_reference():
    sched = TrainingSchedule()
    assert torch.allclose(sched.sigmas.double(), torch.tensor(SIGMAS, dtype=torch.float64), atol=SIGMA_TOL)
    assert torch.allclose(sched.weights.double(), torch.tensor(WEIGHTS, dtype=torch.float64),
                          rtol=WEIGHT_TOL["rel"], atol=WEIGHT_TOL["abs"])


@pytest.mark.parametrize("index", (1, 137, 500, 998))
def test_bf16_lookup_takes_sigma_and_weight_of_the_rounded_timestep(index):
    """The reference casts the timestep to the model dtype, then add_noise / training_weight
    take the entry whose timestep is nearest to it (argmin)."""
    rounded = torch.tensor(N * SIGMAS[index], dtype=torch.float32).to(torch.bfloat16).float().item()
    nearest = min(range(N), key=lambda i: abs(N * SIGMAS[i] - rounded))
    t, sigma, weight = TrainingSchedule().lookup(index, torch.bfloat16)
    assert t.item() == rounded
    assert sigma.item() == pytest.approx(SIGMAS[nearest], abs=SIGMA_TOL)
    assert weight.item() == pytest.approx(WEIGHTS[nearest], **WEIGHT_TOL)


# -- one sample's loss, packed by hand --------------------------------------------------------
def pack_by_hand(latents: torch.Tensor) -> torch.Tensor:
    """(1, C, 1, H, W) -> (1, H/2 * W/2, 4C): token (i, j) is the 2x2 patch at rows 2i..2i+1,
    columns 2j..2j+1, its features channel-major then row-in-patch then column-in-patch
    (diffusers QwenImageEditPipeline._pack_latents: view (B, C, H/2, 2, W/2, 2), permute
    (0, 2, 4, 1, 3, 5); DiffSynth's rearrange "B C (H P) (W Q) -> B (H W) (C P Q)")."""
    _, c, _, h, w = latents.shape
    tokens = torch.empty(1, (h // 2) * (w // 2), c * 4, dtype=latents.dtype)
    for i in range(h // 2):
        for j in range(w // 2):
            for ch in range(c):
                for p in range(2):
                    for q in range(2):
                        tokens[0, i * (w // 2) + j, ch * 4 + p * 2 + q] = latents[0, ch, 0, 2 * i + p, 2 * j + q]
    return tokens


@pytest.fixture(scope="module")
def transformer(demo_model):
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer").eval()


def _encoded():
    g = torch.Generator().manual_seed(7)
    return {"target": torch.randn(1, 16, 1, 4, 6, generator=g),   # 2 x 3 tokens
            "edit_0": torch.randn(1, 16, 1, 6, 4, generator=g),   # 3 x 2 tokens, same count
            "prompt_embeds": torch.randn(1, 5, 64, generator=g),
            "prompt_mask": torch.ones(1, 5, dtype=torch.long)}


def _hand_loss(transformer, encoded, index, noise, condition_first=False):
    sigma, weight = SIGMAS[index], WEIGHTS[index]
    x0 = encoded["target"]
    noisy = (1 - sigma) * x0 + sigma * noise
    velocity = noise - x0
    target_tokens, condition_tokens = pack_by_hand(noisy), pack_by_hand(encoded["edit_0"])
    shapes = [(1, 2, 3), (1, 3, 2)]
    if condition_first:
        target_tokens, condition_tokens = condition_tokens, target_tokens
        shapes = shapes[::-1]
    pred = transformer(hidden_states=torch.cat([target_tokens, condition_tokens], dim=1),
                       timestep=torch.tensor([N * sigma / 1000], dtype=torch.float32),
                       encoder_hidden_states=encoded["prompt_embeds"],
                       img_shapes=[shapes], return_dict=False)[0]
    assert pred.shape == (1, 12, 64)
    return ((pred[:, :6] - pack_by_hand(velocity)) ** 2).mean().item() * weight


def test_hand_packing_is_the_diffusers_layout():
    from diffusers import QwenImageEditPipeline

    latents = _encoded()["target"]
    assert torch.equal(pack_by_hand(latents), QwenImageEditPipeline._pack_latents(latents, 1, 16, 4, 6))


@pytest.mark.parametrize("seed", (0, 3))
def test_sample_loss_matches_the_loss_computed_by_hand(transformer, seed):
    encoded = _encoded()
    # The trainer's generator draws the timestep index first, then the noise, as the reference
    # (torch.randint over 0..999, then noise shaped like the target latents).
    g = torch.Generator().manual_seed(seed)
    index = int(torch.randint(0, N, (1,), generator=g))
    noise = torch.randn(encoded["target"].shape, generator=g, dtype=torch.float32)
    calls = []

    def recording(**inputs):
        calls.append(inputs)
        return transformer(**inputs)

    with torch.no_grad():
        expected = _hand_loss(transformer, encoded, index, noise)
        loss, timestep = sample_loss(recording, encoded, TrainingSchedule(),
                                     torch.Generator().manual_seed(seed), "cpu", torch.float32)
        wrong_order = _hand_loss(transformer, encoded, index, noise, condition_first=True)
    # What the trainer fed the transformer: noisy target tokens, then the condition's, with one
    # (frames, rows, columns) grid per image in that order, and the timestep over 1000.
    (call,) = calls
    sigma = SIGMAS[index]
    noisy = (1 - sigma) * encoded["target"] + sigma * noise
    hand_tokens = torch.cat([pack_by_hand(noisy), pack_by_hand(encoded["edit_0"])], dim=1)
    assert torch.allclose(call["hidden_states"], hand_tokens, atol=1e-6)
    assert [list(map(tuple, shapes)) for shapes in call["img_shapes"]] == [[(1, 2, 3), (1, 3, 2)]]
    assert call["timestep"].tolist() == pytest.approx([sigma], abs=2e-7)
    assert torch.equal(call["encoder_hidden_states"], encoded["prompt_embeds"])
    assert timestep == pytest.approx(N * sigma, abs=2e-4)
    assert WEIGHTS[index] > 0.1  # a weight near 0 would make any loss look right
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The check has teeth: condition tokens first (or their shapes swapped) is a different loss.
    assert abs(wrong_order - expected) > 1e-3 * expected
