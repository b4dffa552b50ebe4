"""LoRA files for tests: random low-rank weights for the demo transformer, saved with the
key styles of diffusers, DiffSynth-Studio and ComfyUI."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
           "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.2",
           "txt_mlp.net.2")
STYLES = {
    "diffusers": lambda k: f"transformer.{k}.weight",
    "diffsynth": lambda k: f"{k.replace('lora_A', 'lora_A.default').replace('lora_B', 'lora_B.default')}.weight",
    "comfyui": lambda k: f"diffusion_model.{k}.weight",
}


def random_lora(model_dir: Path, rank: int = 4, seed: int = 0, scale: float = 0.5) -> dict:
    """Keys like 'transformer_blocks.0.attn.to_q.lora_A' -> tensor, shaped for the model."""
    config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = {"attn.to_q": (inner, inner), "attn.to_k": (inner, inner), "attn.to_v": (inner, inner),
              "attn.to_out.0": (inner, inner), "attn.add_q_proj": (inner, inner),
              "attn.add_k_proj": (inner, inner), "attn.add_v_proj": (inner, inner),
              "attn.to_add_out": (inner, inner), "img_mlp.net.2": (inner, 4 * inner),
              "txt_mlp.net.2": (inner, 4 * inner)}  # (out, in)
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for block in range(config["num_layers"]):
        for target in TARGETS:
            out_dim, in_dim = shapes[target]
            base = f"transformer_blocks.{block}.{target}"
            weights[f"{base}.lora_A"] = torch.randn(rank, in_dim, generator=generator) * scale
            weights[f"{base}.lora_B"] = torch.randn(out_dim, rank, generator=generator) * scale
    return weights


def save_lora(weights: dict, path: Path, style: str = "diffusers") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({STYLES[style](k): v.contiguous() for k, v in weights.items()}, str(path))
    return path
