"""Loading the transformer block by block, straight from safetensors to where each block lives.

`from_pretrained` followed by fp8 casting or offloading would first hold every bf16 weight on
the device (41 GB on the real model) or in host memory, once per process. Here the model is
built empty, and each block is read, cast (fp8 storage) and moved to the device or to its
offload place before the next is read: host memory holds one block at a time.

`place` is that placement for any source of tensors; bench/gpu_check.py gives it random
weights, so the memory it measures on a GPU is that of the loader the trainer uses.
"""
from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import torch

from .savers import Savers, offload, quantization_config, skip_patterns, store_fp8

BLOCKS = "transformer_blocks"
_BLOCK = re.compile(rf"^{BLOCKS}\.(\d+)\.")


class WeightsError(ValueError):
    pass


def _weight_names(folder: Path) -> dict[str, Path]:
    """Each tensor's name -> the safetensors file that holds it."""
    from safetensors import safe_open

    names = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            names.update({k: file for k in f.keys()})
    if not names:
        raise WeightsError(f"{folder}: no *.safetensors weights")
    return names


def block_count(folder: Path) -> int:
    """The transformer's number of blocks, from its config."""
    return int(json.loads((Path(folder) / "config.json").read_text())["num_layers"])


def load_transformer(folder: str | Path, device, dtype: torch.dtype, savers: Savers = Savers()):
    """QwenImageTransformer2DModel on `device` in `dtype`, with the base savers applied (LoRA is
    added afterwards by the caller)."""
    from diffusers import QwenImageTransformer2DModel

    folder, device = Path(folder), torch.device(device)
    if savers.quantized:  # torchao quantizes each weight as diffusers loads it
        model = QwenImageTransformer2DModel.from_pretrained(
            folder, torch_dtype=dtype, quantization_config=quantization_config(savers),
            # diffusers leaves weights mapped to the CPU unquantized: load those unmapped.
            device_map=None if savers.offload_blocks or device.type == "cpu" else {"": str(device)})
        for i, block in enumerate(getattr(model, BLOCKS)):
            _settle(block, i, device, savers)
        _rest(model, lambda m: m.to(device))
        return model

    from accelerate import init_empty_weights
    from safetensors import safe_open

    with init_empty_weights():
        model = QwenImageTransformer2DModel.from_config(QwenImageTransformer2DModel.load_config(folder))
    names = _weight_names(folder)
    expected = set(model.state_dict())
    if expected - set(names):
        missing = sorted(expected - set(names))
        raise WeightsError(f"{folder}: {len(missing)} weight(s) missing, e.g. {missing[0]}")
    with ExitStack() as stack:
        files = {f: stack.enter_context(safe_open(f, "pt")) for f in set(names.values())}
        return place(model, device, dtype, savers,
                     lambda group: {n: files[names[n]].get_tensor(n) for n in group})


def place(model, device, dtype: torch.dtype, savers: Savers, fill) -> torch.nn.Module:
    """Give an empty model (built under accelerate's init_empty_weights) its tensors, block by
    block: `fill(names)` returns {name: CPU tensor} for one block's names (then once for
    everything outside the blocks); each block is cast to fp8 storage where the savers say so
    and moved to the device or to its offload place before the next is filled. The source
    stays the caller's: safetensors files here, random tensors in bench/gpu_check.py."""
    from accelerate.utils import set_module_tensor_to_device

    device = torch.device(device)
    groups: dict[int, list[str]] = {}
    for name in model.state_dict():
        match = _BLOCK.match(name)
        groups.setdefault(int(match.group(1)) if match else -1, []).append(name)
    patterns = skip_patterns(model)

    def read(group: list[str]) -> None:
        values = fill(group)
        if set(group) - set(values):
            raise WeightsError(f"{len(set(group) - set(values))} weight(s) not given, "
                               f"e.g. {sorted(set(group) - set(values))[0]}")
        for name in group:
            value = values[name]
            if value.is_floating_point():
                value = value.to(dtype)
            # The value's own dtype: the empty model's fp32 would be cast to otherwise.
            set_module_tensor_to_device(model, name, "cpu", value=value, dtype=value.dtype)

    for i, block in enumerate(getattr(model, BLOCKS)):
        read(groups.get(i, []))
        if savers.fp8_base:
            store_fp8(block, dtype, patterns)
        _settle(block, i, device, savers)
    read(groups.get(-1, []))
    if savers.fp8_base:
        store_fp8(model, dtype, patterns + (f"^{BLOCKS}",))
    _rest(model, lambda m: m.to(device))
    return model.eval()


def _settle(block, index: int, device, savers: Savers) -> None:
    """The first `offload_blocks` blocks wait in host memory; the others go to the device."""
    if index < savers.offload_blocks:
        offload(block, device)
    else:
        block.to(device)


def _rest(model, move) -> None:
    """Apply `move` to everything outside the blocks (embeddings, final norm and projection)."""
    for name, child in model.named_children():
        if name != BLOCKS:
            move(child)
