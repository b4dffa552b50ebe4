"""LoRA files as every tool keys them, read into one canonical form and written back in any.

Canonical: `transformer_blocks.N.attn.to_q.lora_A.weight` / `.lora_B.weight`, the whole
delta in B @ A (an `.alpha` folded into B), so tools that assume scale 1 (DiffSynth) and
tools that read alpha apply the same delta. The three layouts written:

    diffusers   transformer.<module>.lora_A.weight
    diffsynth   <module>.lora_A.default.weight   (what DiffSynth-Studio's --lora_checkpoint loads)
    comfyui     diffusion_model.<module>.lora_A.weight   (the trainer's own files)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..paths import replacing

PREFIX = "diffusion_model."
ADAPTER = "default"
LAYOUTS = {
    "diffusers": ("transformer.", ".lora_{}.weight"),
    "diffsynth": ("", f".lora_{{}}.{ADAPTER}.weight"),
    "comfyui": (PREFIX, ".lora_{}.weight"),
}
_PREFIXES = (PREFIX, "transformer.", "base_model.model.", "pipe.dit.", "dit.")


class LoraFormatError(ValueError):
    pass


def canonical_key(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = key.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")
    return key.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B.")


def layout_of(keys) -> str:
    """Which tool keyed a file, from its keys (the first that decides)."""
    for key in keys:
        if key.startswith(PREFIX):
            return "comfyui"
        if f".{ADAPTER}.weight" in key:
            return "diffsynth"
        if key.startswith("transformer."):
            return "diffusers"
        if ".lora_down." in key or key.startswith("lora_unet_"):
            return "kohya"
    return "unprefixed"


@dataclass
class LoraState:
    """A LoRA file read: canonical weights, and what the file said besides."""
    path: Path
    weights: dict[str, torch.Tensor]
    layout: str
    metadata: dict[str, str] = field(default_factory=dict)
    alpha: float | None = None     # the file's own alpha (None: none stored, scale 1)
    unmapped: list[str] = field(default_factory=list)  # file keys that are no LoRA weight

    @property
    def modules(self) -> list[str]:
        return sorted(k[: -len(".lora_A.weight")] for k in self.weights if k.endswith(".lora_A.weight"))

    def pair(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weights[f"{module}.lora_A.weight"], self.weights[f"{module}.lora_B.weight"]

    def ranks(self) -> set[int]:
        return {self.pair(m)[0].shape[0] for m in self.modules}


def load_lora(path: str | Path) -> LoraState:
    """Any of the diffusers / DiffSynth / ComfyUI (lora_A/B or lora_down/up) key styles."""
    path = Path(path)
    if not path.is_file():
        raise LoraFormatError(f"{path}: LoRA file not found")
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            raw = {canonical_key(k): f.get_tensor(k) for k in keys}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise LoraFormatError(f"{path}: not a safetensors file ({exc})") from None
    originals = dict(zip(map(canonical_key, keys), keys))
    alphas = {k[: -len(".alpha")]: v for k, v in raw.items() if k.endswith(".alpha")}
    state = {k: v for k, v in raw.items() if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    if not state:
        raise LoraFormatError(f"{path}: not a LoRA (no lora_A/lora_B or lora_down/lora_up weights)")
    paired = {k for k in state if k.replace(".lora_A.", ".lora_B.") in state}
    paired |= {k.replace(".lora_A.", ".lora_B.") for k in paired}
    state = {k: v for k, v in state.items() if k in paired}  # half a pair: reported as unmapped
    if not state:
        raise LoraFormatError(f"{path}: not a LoRA (no lora_A weight with its lora_B)")
    alpha = None
    for module, value in alphas.items():
        a, b = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        if a in state:
            alpha = float(value)
            state[b] = state[b].float() * (alpha / state[a].shape[0])
    used = set(state) | {f"{m}.alpha" for m in alphas if f"{m}.lora_A.weight" in state}
    unmapped = sorted(originals[k] for k in raw if k not in used)
    lora = LoraState(path, state, layout_of(keys), dict(metadata), alpha, unmapped)
    for module in lora.modules:
        a, b = lora.pair(module)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoraFormatError(f"{path}: {module} has mismatched ranks: lora_A {tuple(a.shape)}, "
                                  f"lora_B {tuple(b.shape)} (B's columns must equal A's rows)")
    return lora


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """The canonical weights alone (the trainer's loader)."""
    return load_lora(path).weights


def keyed(weights: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Canonical weights under one tool's key layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; choose {', '.join(LAYOUTS)}")
    prefix, suffix = LAYOUTS[layout]
    out = {}
    for key, value in weights.items():
        module, _, side = key[: -len(".weight")].rpartition(".lora_")
        out[prefix + module + suffix.format(side)] = value.contiguous()
    return out


def write_lora(path: str | Path, weights: dict[str, torch.Tensor], layout: str = "comfyui",
               metadata: dict | None = None) -> Path:
    """Write whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    state = keyed(weights, layout)
    ranks = {v.shape[0] for k, v in weights.items() if k.endswith(".lora_A.weight")}
    meta = {"format": layout, "alpha_folded_into_lora_B": "true",
            **({"lora_rank": str(next(iter(ranks))), "lora_alpha": str(next(iter(ranks)))}
               if len(ranks) == 1 else {}),
            **{k: str(v) for k, v in (metadata or {}).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def base_mismatches(lora: LoraState, model_dir: str | Path) -> list[str]:
    """The LoRA's modules that the model's transformer lacks (from the safetensors headers, no
    weights loaded). A module it has with other shapes means another base model: raised."""
    from .memory.weights import tensors

    shapes = {t.name[: -len(".weight")]: t.shape for t in tensors(Path(model_dir) / "transformer")
              if t.name.endswith(".weight") and len(t.shape) == 2}
    missing = []
    for module in lora.modules:
        a, b = lora.pair(module)
        if module not in shapes:
            missing.append(module)
        elif shapes[module] != (b.shape[0], a.shape[1]):
            raise LoraFormatError(
                f"{lora.path.name}: made for another base model: {module} is "
                f"{b.shape[0]}x{a.shape[1]} in the LoRA, {shapes[module][0]}x{shapes[module][1]} "
                f"in {Path(model_dir).name}")
    if len(missing) == len(lora.modules):
        raise LoraFormatError(f"{lora.path.name}: not a LoRA for this base model: none of its "
                              f"{len(missing)} modules is in {Path(model_dir).name}'s transformer "
                              f"(e.g. {missing[0]})")
    return missing
