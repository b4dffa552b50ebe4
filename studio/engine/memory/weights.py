"""What each component's weights occupy, read from the safetensors headers (no weights loaded)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
               "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    stored_bytes: int  # per element, as saved

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def block(self) -> int | None:
        match = _BLOCK.match(self.name)
        return int(match.group(1)) if match else None


def _header(file: Path) -> dict:
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


@lru_cache(maxsize=16)
def tensors(component: Path) -> tuple[Tensor, ...]:
    """Every tensor of a component folder (e.g. <model>/transformer)."""
    out = []
    for file in sorted(Path(component).glob("*.safetensors")):
        for name, meta in _header(file).items():
            if name != "__metadata__":
                out.append(Tensor(name, tuple(meta["shape"]), DTYPE_BYTES.get(meta["dtype"], 4)))
    return tuple(out)


def linear_modules(items: tuple[Tensor, ...]) -> set[str]:
    """Modules with a 2-D weight: the Linear layers that fp8 storage and int8 act on (the
    transformer and text encoder have no convolutions; embeddings are told apart by name)."""
    return {t.module for t in items if t.name.endswith(".weight") and len(t.shape) == 2
            and "embed_tokens" not in t.name}


def stored_bytes(items, dtype_bytes: int, low_bytes: int | None = None,
                 skip: tuple[str, ...] = ()) -> int:
    """Bytes of `items` at `dtype_bytes` each, their Linear layers at `low_bytes` (fp8: 1,
    int8: 1 plus one scale per output row) except modules matching `skip`."""
    low = set() if low_bytes is None else {
        m for m in linear_modules(tuple(items)) if not any(re.search(p, m) for p in skip)}
    total = 0
    for t in items:
        if t.module in low:
            total += t.numel * low_bytes
        else:
            total += t.numel * dtype_bytes
    return total


def component_params(model: Path, component: str) -> int:
    return sum(t.numel for t in tensors(Path(model) / component))
