"""The transformer a run trains: the frozen base, loaded where its memory savers put it, with
LoRA on top in fp32 on the device.

The base is never moved as a whole after loading (`transformer.to(device)` would undo block
offload), so accelerate is told not to place it and DDP is told to leave the frozen weights
alone (studio/engine/savers.py, studio/engine/loading.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from studio.engine.loading import block_count, load_transformer
from studio.engine.savers import Savers, gradient_checkpointing, problems

from .lora_io import add_lora, lora_parameters


def run_mode(deepspeed: bool, world: int) -> str:
    """The distribution mode as the savers' rule names it."""
    return "zero2" if deepspeed else ("ddp" if world > 1 else "single")


def plan(args, model_path: Path, device: torch.device, dtype: torch.dtype,
         mode: str) -> tuple[Savers, bool, list[str]]:
    """The run's savers, whether it checkpoints (auto: on accelerators) and why these savers
    cannot train here (empty when they can): known before anything loads."""
    savers = Savers.of(args)
    checkpointing = gradient_checkpointing(args.use_gradient_checkpointing, device.type)
    found = problems(savers, device=str(device), training=True, mode=mode, dtype=dtype,
                     num_blocks=block_count(Path(model_path) / "transformer"),
                     gradient_checkpointing=checkpointing)
    return savers, checkpointing, found


def memory_plan(args, model_path: Path, device: torch.device, dtype: torch.dtype, mode: str,
                world: int):
    """(plan, verdict) of this run on this process's device and node."""
    import os

    from studio.engine.memory.plan import TrainSetting, train_plan
    from studio.engine.memory.verdict import budget, train_verdict

    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    setting = TrainSetting.of(args, device=device.type, mode=mode, processes_per_node=per_node,
                              num_machines=max(1, world // per_node),
                              dtype_bytes=dtype.itemsize)
    planned = train_plan(model_path, setting)
    return planned, train_verdict(model_path, setting, planned, budget(str(device)))


def fresh_lora(params: dict[str, torch.nn.Parameter], device, seed: int) -> None:
    """Every LoRA tensor in fp32 on the device, initialised from `seed` as peft initialises it
    (A Kaiming-uniform, B zero). Done here and not left to peft, which casts a new adapter to
    its base layer's dtype and device: on an fp8 base that rounds A to 3 mantissa bits, and an
    offloaded block's adapter would stay in host memory. So every saver starts from the same
    LoRA, bit for bit, on every rank."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in params.items():
        value = torch.zeros(p.shape, dtype=torch.float32)
        if ".lora_A." in name:
            torch.nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=generator)
        p.data = value.to(device)
        p.requires_grad_(True)


def training_transformer(model_path: Path, device: torch.device, dtype: torch.dtype,
                         savers: Savers, args, checkpointing: bool):
    """The base with its savers and a fresh LoRA, in train mode; returns it and the LoRA
    parameters (the only trainable ones)."""
    transformer = load_transformer(Path(model_path) / "transformer", device, dtype, savers)
    transformer.requires_grad_(False)
    add_lora(transformer, args.lora_rank, args.lora_alpha, args.lora_target_modules)
    params = lora_parameters(transformer)
    fresh_lora(params, device, args.seed)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer.train(), list(params.values())


def keep_frozen_out_of_ddp(transformer) -> int:
    """DDP broadcasts every parameter and buffer from rank 0 at the start and checks that they
    share one device; the frozen base needs neither (every rank loaded the same files; 41 GB
    to broadcast on the real model) and may sit partly in host memory (block offload).
    Returns how many tensors DDP leaves out."""
    from torch.nn.parallel import DistributedDataParallel

    names = [n for n, p in transformer.named_parameters() if not p.requires_grad]
    names += [n for n, _ in transformer.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(transformer, names)
    return len(names)
