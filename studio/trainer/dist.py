"""Rank and world size, trusted from torch.distributed.

Under DeepSpeed ZeRO-2 on CPU (gloo) accelerate reports process 0 of 1 on every rank while
torch.distributed knows the real world (docs/design.md), so nothing here asks accelerate."""
from __future__ import annotations

import torch
import torch.distributed as td


def active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        td.barrier()


def _reduce_device():
    # NCCL/HCCL reduce device tensors; gloo reduces CPU tensors.
    backend = td.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "hccl":
        return torch.device("npu", torch.npu.current_device())
    return torch.device("cpu")


def all_sum(value: float) -> float:
    if not active():
        return float(value)
    device = _reduce_device()
    dtype = torch.float32 if device.type == "npu" else torch.float64  # HCCL lacks fp64 sums
    t = torch.tensor([float(value)], dtype=dtype, device=device)
    td.all_reduce(t)
    return float(t.item())


def any_true(flag: bool) -> bool:
    return all_sum(1.0 if flag else 0.0) > 0
