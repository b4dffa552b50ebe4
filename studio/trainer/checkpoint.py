"""LoRA checkpoints and resume states under --output_path (the names: run_files.py).

    step-000010.safetensors   a LoRA every --save_steps (and at epoch ends without it)
    final.safetensors          the LoRA at the end
    states/step-000010/        lora_params.safetensors (raw adapter weights), optimizer.pt or
                               deepspeed/ (one optimizer shard per rank), state.json last
    resume.json                names the current state

A save at step N goes in this order, so that a kill at any instant leaves a usable run:
  1. the state is built in states/.step-N.partial and renamed to states/step-N;
  2. resume.json is replaced to name it: the resume point moves in one atomic step;
  3. step-N.safetensors (and final.safetensors) are written, each replaced whole;
  4. states older than the previous one are deleted.
A LoRA file therefore never exists without a state at least as new (loop.py refuses to train
over one that has none), and a resume writes the LoRA files that a kill kept from step 3.

Data order, timesteps and noise are functions of the seed and step (order.py), so no sampler
or RNG state is kept.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import dist, faults, run_files
from .lora_io import lora_parameters, save_lora


class CheckpointError(RuntimeError):
    pass


class ResumeError(CheckpointError):
    pass


def space_problem(output: Path, transformer, final: bool, deepspeed: bool) -> str | None:
    """Why the output disk cannot take the next save, if it cannot. A save writes, all fp32
    like the trainable weights: the LoRA file (and final), the state's raw weights and AdamW's
    two moments; DeepSpeed adds the module's and its own master copy."""
    weights = 4 * sum(p.numel() for p in lora_parameters(transformer).values())
    copies = (2 if final else 1) + 3 + (2 if deepspeed else 0)
    need = int(weights * copies * 1.25) + 2**20  # a margin, and room for headers and JSON
    free = faults.free_bytes(output)
    if free >= need:
        return None
    return f"disk full: need {need / 2**20:.1f} MB at {output} ({free / 2**20:.1f} MB free)"


def save(output: Path, step: int, model, transformer, optimizer, lr_sched, info: dict,
         deepspeed_engine=None, final: bool = False) -> Path | None:
    """Called on every rank (DeepSpeed writes one optimizer shard per rank); everything else
    is written by rank 0 alone."""
    faults.point("before-save", step)
    folder = run_files.state_dir(output, step)
    staging = run_files.partial(folder)
    if dist.is_main():
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
    lora_file = None
    if dist.is_main():
        state = {**info, "step": step, "final": final, "saved_at": time.time(),
                 "deepspeed": deepspeed_engine is not None}
        (staging / run_files.STATE).write_text(json.dumps(state, indent=2) + "\n")
        _discard(folder)  # a state of this step from before a resume, never the current one
        os.replace(staging, folder)
        faults.point("state-written", step)
        run_files.point_to(output, folder)
        faults.point("pointer-moved", step)
        lora_file = write_loras(output, step, final, transformer, info)
        faults.point("after-lora", step)
        _prune(output, folder)
    dist.barrier()
    return lora_file


def write_loras(output: Path, step: int, final: bool, transformer, info: dict,
                only_missing: bool = False) -> Path:
    """The step's LoRA file, and final.safetensors at the end."""
    rank, alpha = info["lora_rank"], info["lora_alpha"]
    for path in [run_files.lora_path(output, step)] + ([output / run_files.FINAL] if final else []):
        if not (only_missing and path.is_file()):
            save_lora(path, transformer, rank, alpha, {"step": step})
    return run_files.lora_path(output, step)


def _discard(folder: Path) -> None:
    """Delete a state folder; renamed away first, so that no half-deleted folder still looks
    complete."""
    if folder.exists():
        doomed = folder.with_name(f".{folder.name}.deleting")  # clean_leftovers ends it too
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(folder, doomed)
        shutil.rmtree(doomed)


def _prune(output: Path, current: Path) -> None:
    """Keep the current state and the one before it. States after it (from before a resume)
    stay until they are redone; the old layout's folder goes with the older ones."""
    older = [s for s in run_files.states(output)
             if run_files.state_step(s) < run_files.state_step(current)]
    for folder in older[:-1]:
        _discard(folder)
    if older:
        for name in run_files.LEGACY_NAMES:
            shutil.rmtree(output / name, ignore_errors=True)


def read_state(folder: Path) -> dict:
    return json.loads((folder / run_files.STATE).read_text())


def restore(folder: Path, transformer, optimizer, lr_sched, deepspeed_engine=None) -> dict:
    state = read_state(folder)
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
