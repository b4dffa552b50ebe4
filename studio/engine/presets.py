"""Sampler presets. Few-step (distilled) LoRAs such as Qwen-Image-Lightning for Edit are
trained for a fixed number of steps without classifier-free guidance: running them at the
model card's 50 steps and cfg 4 wastes time and burns the image."""
from __future__ import annotations

SAMPLER_PRESETS: dict[str, dict | None] = {
    "Model defaults": None,
    "Few-step LoRA: 4 steps, cfg 1": {"steps": 4, "true_cfg_scale": 1.0},
    "Few-step LoRA: 8 steps, cfg 1": {"steps": 8, "true_cfg_scale": 1.0},
}


def sampler_settings(preset: str, defaults: dict) -> dict:
    """Steps and true_cfg_scale for a preset; the model's defaults for 'Model defaults'."""
    if preset not in SAMPLER_PRESETS:
        raise ValueError(f"unknown sampler preset {preset!r}")
    return SAMPLER_PRESETS[preset] or {k: defaults[k] for k in ("steps", "true_cfg_scale")}
