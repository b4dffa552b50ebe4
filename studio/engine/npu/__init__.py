"""Ascend NPU support. torch_npu is optional: everything here is a no-op without it."""
from __future__ import annotations

import importlib.util


def npu_available() -> bool:
    """True when torch_npu imports and sees at least one NPU."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        return bool(torch.npu.is_available())
    except Exception:  # a broken CANN install must not stop CPU/GPU users
        return False
