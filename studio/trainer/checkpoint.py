"""LoRA checkpoints and the resume state under --output_path.

    step-000010.safetensors   a LoRA every --save_steps (and at epoch ends without it)
    final.safetensors          the LoRA at the end
    resume/                    state.json, lora_params.safetensors (raw adapter weights),
                               optimizer.pt, or deepspeed/ (one optimizer shard per rank)

The resume folder is written beside and swapped in whole, so a kill -9 mid-save leaves the
previous one usable. Data order, timesteps and noise are functions of the seed and step
(order.py), so no sampler or RNG state is kept.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import dist
from .lora_io import lora_parameters, save_lora

RESUME = "resume"


class ResumeError(ValueError):
    pass


def lora_path(output: Path, step: int) -> Path:
    return output / f"step-{step:06d}.safetensors"


def save(output: Path, step: int, model, transformer, optimizer, lr_sched, info: dict,
         deepspeed_engine=None, final: bool = False) -> Path | None:
    """Called on every rank (DeepSpeed writes one optimizer shard per rank); everything else
    is written by rank 0 alone."""
    rank, alpha = info["lora_rank"], info["lora_alpha"]
    staging = output / f".{RESUME}.staging"
    lora_file = None
    if dist.is_main():
        lora_file = save_lora(lora_path(output, step), transformer, rank, alpha, {"step": step})
        if final:
            save_lora(output / "final.safetensors", transformer, rank, alpha, {"step": step})
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        raw = {k: p.detach().float().cpu().contiguous() for k, p in lora_parameters(transformer).items()}
        save_file(raw, str(staging / "lora_params.safetensors"))
        if deepspeed_engine is None:
            torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict()},
                       staging / "optimizer.pt")
    dist.barrier()
    if deepspeed_engine is not None:
        deepspeed_engine.save_checkpoint(str(staging / "deepspeed"), tag="state",
                                         client_state={"lr_scheduler": lr_sched.state_dict()},
                                         exclude_frozen_parameters=True)  # LoRA only, not 40 GB
        dist.barrier()
    if dist.is_main():
        state = {**info, "step": step, "lora_file": lora_file.name, "saved_at": time.time(),
                 "deepspeed": deepspeed_engine is not None}
        (staging / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        current, old = output / RESUME, output / f".{RESUME}.old"
        shutil.rmtree(old, ignore_errors=True)
        if current.exists():
            os.replace(current, old)
        os.replace(staging, current)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return lora_file


def read_state(output: Path) -> dict | None:
    f = output / RESUME / "state.json"
    return json.loads(f.read_text()) if f.is_file() else None


def restore(output: Path, transformer, optimizer, lr_sched, deepspeed_engine=None) -> dict:
    folder = output / RESUME
    state = json.loads((folder / "state.json").read_text())
    raw = load_file(str(folder / "lora_params.safetensors"))
    params = lora_parameters(transformer)
    missing = sorted(set(params) - set(raw))
    if missing:
        raise ResumeError(f"{folder}: resume state lacks {missing[0]} (was the LoRA config changed?)")
    with torch.no_grad():
        for name, value in raw.items():
            params[name].copy_(value.to(params[name].dtype))
    if state.get("deepspeed"):
        if deepspeed_engine is None:
            raise ResumeError(f"{folder}: saved under DeepSpeed; resume with the same accelerate config")
        _, client = deepspeed_engine.load_checkpoint(str(folder / "deepspeed"), tag="state",
                                                     load_module_strict=False)
        lr_sched.load_state_dict(client["lr_scheduler"])
    else:
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        lr_sched.load_state_dict(saved["lr_scheduler"])
    # The next step uses the scheduler's last lr, whatever lr the optimizer state carried.
    for group, lr in zip(lr_sched.optimizer.param_groups, lr_sched.get_last_lr()):
        group["lr"] = lr
    return state
