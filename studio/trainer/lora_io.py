"""LoRA on the diffusers transformer (peft) and the one file format that every tool reads.

Saved keys are ComfyUI-style, `diffusion_model.transformer_blocks.N.attn.to_q.lora_A.weight`:
diffusers' `load_lora_weights`, DiffSynth-Studio's pipeline loader (strips `diffusion_model.`)
and ComfyUI all read them (docs/design.md); DiffSynth's training `--lora_checkpoint` does not
strip it, so the recipe export writes it a DiffSynth-keyed copy (engine/lora_files.py). No `.alpha` keys are written; the
alpha/rank scale is folded into lora_B instead, so tools that assume scale 1 (DiffSynth)
apply the same delta as tools that read alpha.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .run_files import replacing

# The key layouts and the reader live in the engine (engine/lora_files.py): one rule.
from ..engine.lora_files import ADAPTER, PREFIX, LoraFormatError, canonical_key, read_lora  # noqa: F401


def add_lora(transformer, rank: int, alpha: float, targets: str | list[str]) -> None:
    from peft import LoraConfig

    modules = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    modules = [m for m in modules if m]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, init_lora_weights=True)
    try:
        transformer.add_adapter(config, adapter_name=ADAPTER)
    except ValueError as exc:
        raise LoraFormatError(f"--lora_target_modules {','.join(modules)}: {exc}") from exc


def lora_parameters(transformer) -> dict[str, torch.nn.Parameter]:
    """Trainable LoRA parameters by canonical name (`....to_q.lora_A.weight`); the run's own
    adapter only (a preview's few-step LoRA may sit beside it)."""
    suffix = f".{ADAPTER}.weight"
    return {name.replace(suffix, ".weight"): p for name, p in transformer.named_parameters()
            if f".lora_A{suffix}" in name or f".lora_B{suffix}" in name}


def export_state(transformer, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """The file contents: ComfyUI keys, alpha/rank folded into lora_B, fp32 on CPU."""
    scale = alpha / rank
    out = {}
    for name, p in lora_parameters(transformer).items():
        t = p.detach().float().cpu()
        out[PREFIX + name] = (t * scale if ".lora_B." in name else t).contiguous()
    return out


def save_lora(path: Path, transformer, rank: int, alpha: float, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "comfyui", "lora_rank": str(rank), "lora_alpha": str(alpha),
                "alpha_folded_into_lora_B": "true",
                **{k: str(v) for k, v in (meta or {}).items()}}
    with replacing(path) as tmp:
        save_file(export_state(transformer, rank, alpha), str(tmp), metadata=metadata)
    return path


def check_compatible(path: str | Path, rank: int, targets: str) -> None:
    """Refuse, before a run is queued, a LoRA to start from whose rank or modules differ from
    the run's (load_into would fail only once the run starts). Reads shapes, not tensors."""
    path = Path(path)
    if not path.is_file():
        raise LoraFormatError(f"{path}: LoRA file not found")
    with safe_open(str(path), "pt") as f:
        downs = {canonical_key(k): k for k in f.keys() if ".lora_A." in canonical_key(k)}
        if not downs:
            raise LoraFormatError(f"{path}: no lora_A/lora_B (or lora_down/lora_up) weights found")
        ranks = {f.get_slice(k).get_shape()[0] for k in downs.values()}
    if ranks != {rank}:
        raise LoraFormatError(f"{path.name} has LoRA rank {'/'.join(map(str, sorted(ranks)))}; set "
                              f"the LoRA rank to that to start from it (now {rank})")
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    modules = {k.split(".lora_A.")[0] for k in downs}
    outside = sorted(m for m in modules if not any(m == t or m.endswith("." + t) for t in wanted))
    if outside:
        raise LoraFormatError(f"{path.name} has LoRA weights on modules the target modules leave "
                              f"out, e.g. {outside[0]}; add them to the target modules")


def load_into(transformer, path: str | Path, rank: int, alpha: float) -> int:
    """Copy a LoRA file into the model's adapter; every key must match a parameter."""
    state = read_lora(path)
    params = lora_parameters(transformer)
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise LoraFormatError(f"{path}: {len(unknown)} key(s) match no LoRA module here, e.g. "
                              f"{unknown[0]} (check --lora_target_modules)")
    scale = alpha / rank
    with torch.no_grad():
        for name, value in state.items():
            p = params[name]
            if tuple(value.shape) != tuple(p.shape):
                raise LoraFormatError(f"{path}: {name} has shape {tuple(value.shape)}, the model "
                                      f"expects {tuple(p.shape)} (is --lora_rank right?)")
            value = value.float() / scale if ".lora_B." in name else value
            p.copy_(value.to(p.dtype))
    return len(state)


@contextmanager
def loaded(transformer, path: str | Path | None, rank: int, alpha: float):
    """The adapter holds a LoRA file's weights inside the block, its own again after it
    (path None: its own throughout)."""
    if path is None:
        yield
        return
    params = lora_parameters(transformer)
    kept = {name: p.detach().clone() for name, p in params.items()}
    load_into(transformer, path, rank, alpha)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(kept[name])
