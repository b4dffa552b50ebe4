"""Ascend NPU support. torch_npu is optional: everything here is a no-op without it.

- patches: `apply_patches(transformer)` routes attention / RMSNorm / RoPE through torch_npu's
  fused operators (and `remove_patches`).
- env: `npu_env()` (the recipe's Ascend variables), `training_env()` (plus CANN's set_env.sh).
The submodules load lazily so that `pick_device` does not import diffusers.
"""
from __future__ import annotations

import importlib
import importlib.util

_LAZY = {
    "apply_patches": "patches", "remove_patches": "patches", "import_torch_npu": "patches",
    "npu_env": "env", "training_env": "env", "find_set_env": "env", "sourced_env": "env",
    "RECIPE_ENV": "env", "OPTIONAL_ENV": "env",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
