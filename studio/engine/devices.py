"""Which device and dtype the engine runs on: cuda, then npu, then mps, then cpu."""
from __future__ import annotations

import gc

import torch

from .npu import npu_available

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(requested: str | None = None) -> str:
    if requested and requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if npu_available():
        return "npu"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, requested: str | None = None) -> torch.dtype:
    """bf16 on accelerators, fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if requested and requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"unknown dtype {requested!r}; choose one of {', '.join(DTYPES)}")
        return DTYPES[requested]
    return torch.float32 if device.split(":")[0] == "cpu" else torch.bfloat16


def training_dtype(device: str, mixed_precision: str) -> torch.dtype:
    """The dtype a run computes (and encodes) in, from its --mixed_precision."""
    requested = {"auto": None, "no": "fp32", "bf16": "bf16", "fp16": "fp16"}[mixed_precision]
    return pick_dtype(device, requested)


def free_memory(device) -> None:
    """Give what was freed back to the device (after dropping a model): collect, then empty
    the allocator's cache on CUDA/NPU."""
    gc.collect()
    backend = getattr(torch, torch.device(device).type, None)  # torch.cuda / torch.npu
    if backend is not None and hasattr(backend, "empty_cache"):
        backend.empty_cache()


def peak_memory_gb(device: torch.device) -> float:
    """This process's peak memory on `device`: the allocator's peak on CUDA/NPU, peak RSS on
    the CPU (what decides whether a run fits)."""
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "npu") else None
    if backend is not None:
        return backend.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
