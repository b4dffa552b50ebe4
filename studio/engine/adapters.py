"""LoRA adapters on the live pipeline: each loaded once, switched by weights in milliseconds.

diffusers' `load_lora_weights` reads LoRA files keyed the diffusers way, DiffSynth's way
(`…lora_A.default.weight`) and ComfyUI's / ai-toolkit's (`diffusion_model.` prefix), so one
loader serves files from every tool. Loaded adapters stay on the transformer as peft
adapters; `set_adapters` picks which ones run and how strongly.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file


@dataclass(frozen=True)
class AdapterRef:
    path: Path
    strength: float = 1.0
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.path.stem


def split_strength(text: str) -> tuple[str, float]:
    """'thing:0.8' -> ('thing', 0.8); 'thing' -> ('thing', 1.0). Colons in paths survive."""
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            strength = float(tail)
        except ValueError:
            return text, 1.0
        if not 0.0 <= strength <= 2.0:
            raise ValueError(f"adapter strength must be between 0 and 2, got {strength} in {text!r}")
        return head, strength
    return text, 1.0


def resolve_adapter(text: str, lookup: Callable[[int], dict] | None = None) -> AdapterRef:
    """`7`, `7:0.8`, `lora.safetensors` or `lora.safetensors:1.5` -> an AdapterRef.
    Numbers are adapter ids, looked up with `lookup(id)` -> {"path", "name"}: the store's
    require_adapter, which says when there is none."""
    ref, strength = split_strength(text.strip())
    if ref.isdigit():
        if lookup is None:
            raise ValueError(f"adapter {ref}: an adapter id needs a project store")
        row = lookup(int(ref))
        return AdapterRef(Path(row["path"]), strength, row["name"])
    path = Path(ref).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    return AdapterRef(path.resolve(), strength)


def adapter_key(path: Path) -> str:
    """A peft adapter name for this file; a re-saved file gets a new name, so it is reloaded."""
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()
    return f"a_{digest[:12]}"


class AdapterSlots:
    """The adapters loaded into one pipeline, at most `limit` at a time (least recently used
    ones are unloaded first). Not thread-safe: the Editor calls it under its run lock."""

    def __init__(self, pipe, limit: int = 8):
        self.pipe = pipe
        self.limit = limit
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.load_count = 0

    def _ensure_loaded(self, path: Path, keep: set[str]) -> str:
        if not path.is_file():
            raise FileNotFoundError(f"adapter file not found: {path}")
        key = adapter_key(path)
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return key
        while len(self.loaded) >= self.limit:
            victim = next((k for k in self.loaded if k not in keep), None)
            if victim is None:
                break
            self.pipe.delete_adapters(victim)
            del self.loaded[victim]
        try:
            self.pipe.load_lora_weights(load_file(str(path)), adapter_name=key)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"{path}: not a LoRA for this model ({exc})") from exc
        self.loaded[key] = path
        self.load_count += 1
        return key

    def activate(self, refs: list[AdapterRef]) -> None:
        """Run the next edits with exactly these adapters and strengths (none: the base model)."""
        if not refs:
            if self.loaded:
                self.pipe.disable_lora()
            return
        keys: list[str] = []
        for ref in refs:
            keys.append(self._ensure_loaded(Path(ref.path), keep=set(keys)))
        self.pipe.enable_lora()
        self.pipe.set_adapters(keys, adapter_weights=[float(ref.strength) for ref in refs])
