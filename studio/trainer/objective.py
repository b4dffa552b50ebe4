"""One training sample's loss: noise the target latents, append the edit image's latents to
the image token sequence, predict the velocity, and score only the target tokens.

Follows DiffSynth-Studio 084bc2f: QwenImagePipeline.training_loss and model_fn_qwen_image
(diffsynth/pipelines/qwen_image.py), through the diffusers transformer's own forward as
QwenImageEditPipeline.__call__ calls it (timestep / 1000, img_shapes per image).
"""
from __future__ import annotations

import torch

from .schedule import TrainingSchedule, add_noise, training_target, weighted_loss


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, H, W) latents -> (B, H/2 * W/2, C*4) tokens of 2x2 patches
    (QwenImageEditPipeline._pack_latents)."""
    from diffusers import QwenImageEditPipeline

    b, c, _, h, w = latents.shape
    return QwenImageEditPipeline._pack_latents(latents, b, c, h, w)


def token_grid(latents: torch.Tensor) -> tuple[int, int, int]:
    return (1, latents.shape[-2] // 2, latents.shape[-1] // 2)


def sample_loss(model, encoded: dict[str, torch.Tensor], schedule: TrainingSchedule,
                generator: torch.Generator, device, dtype: torch.dtype):
    """Returns (loss, timestep) for one encoded pair; `generator` draws timestep and noise."""
    # Reference: timestep_id ~ U{0..999}, noise ~ N(0, I) shaped like the target latents.
    index = int(torch.randint(0, len(schedule), (1,), generator=generator))
    noise = torch.randn(encoded["target"].shape, generator=generator, dtype=torch.float32)
    return loss_at(model, encoded, schedule, index, noise, device, dtype)


def loss_at(model, encoded: dict[str, torch.Tensor], schedule: TrainingSchedule, index: int,
            noise: torch.Tensor, device, dtype: torch.dtype):
    """(loss, timestep) for one encoded pair at a given schedule index and noise."""
    target = encoded["target"]
    edits = [encoded[k] for k in sorted(k for k in encoded if k.startswith("edit_"))]
    timestep, sigma, weight = schedule.lookup(index, dtype)

    x0 = target.to(device, torch.float32)
    noise = noise.to(device)
    noisy = add_noise(x0, noise, sigma.to(device)).to(dtype)
    velocity = training_target(x0, noise)

    tokens = pack(noisy)
    n_target = tokens.shape[1]
    hidden = torch.cat([tokens] + [pack(e.to(device, dtype)) for e in edits], dim=1)
    mask = encoded["prompt_mask"].to(device)
    pred = model(
        hidden_states=hidden,
        timestep=(timestep / 1000).reshape(1).to(device, dtype),
        encoder_hidden_states=encoded["prompt_embeds"].to(device, dtype),
        encoder_hidden_states_mask=None if bool(mask.all()) else mask,
        img_shapes=[[token_grid(target)] + [token_grid(e) for e in edits]],
        return_dict=False,
    )[0]
    # Loss on the target tokens only; the edit tokens are conditioning.
    loss = weighted_loss(pred[:, :n_target], pack(velocity), weight.to(device))
    return loss, float(timestep)
