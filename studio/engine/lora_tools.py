"""What a fine-tuner does with trained LoRAs: merge, convert, average, inspect (fuse: lora_fuse.py).

Each works on canonical weights (lora_files.py), checks the inputs against the base model's
transformer before writing, and writes one file, whole, in a layout every tool loads.

- Merge by concatenation is exact: A = [A_1; …; A_n], B = [s_1 B_1, …, s_n B_n] gives
  B A = Σ s_i B_i A_i, the delta of stacking the LoRAs at those strengths.
- Merge to a rank r is the best rank-r approximation (truncated SVD, Eckart–Young) of that
  sum; its error is ‖Δ − Δ_r‖_F / ‖Δ‖_F over all modules, reported with the worst module.
- Averaging checkpoints averages each A and each B (post-hoc EMA, as musubi-tuner does), so
  every file must have the same modules and ranks.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .lora_files import LAYOUTS, LoraFormatError, LoraState, base_mismatches, load_lora, write_lora

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")


@dataclass
class ToolResult:
    path: Path
    modules: int
    rank: str                               # "8", or "4-8" when modules differ
    unmapped: list[str] = field(default_factory=list)
    error: float | None = None              # relative Frobenius error of an approximation
    worst: tuple[str, float] | None = None  # its worst module
    weights: list[float] = field(default_factory=list)  # an average's weight per input

    def summary(self) -> str:
        text = f"wrote {self.path} ({self.modules} modules, rank {self.rank})"
        if self.error is not None:
            text += (f"; rank-{self.rank} approximation error {self.error:.2%} of the merged delta "
                     f"(relative Frobenius), worst {self.worst[0]} {self.worst[1]:.2%}")
        if self.weights:
            text += "; weights " + ", ".join(f"{w:.4f}" for w in self.weights)
        if self.unmapped:
            text += f"; {len(self.unmapped)} key(s) did not map and were left out: " + ", ".join(self.unmapped[:5])
            text += " …" if len(self.unmapped) > 5 else ""
        return text


def _rank_text(weights: dict) -> str:
    ranks = sorted({v.shape[0] for k, v in weights.items() if k.endswith(".lora_A.weight")})
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"


def _load_checked(paths, model_dir) -> tuple[list[LoraState], list[str]]:
    """Every input read and checked against the base model before anything is written."""
    loras = [load_lora(p) for p in paths]
    unmapped = []
    for lora in loras:
        missing = base_mismatches(lora, model_dir) if model_dir else []
        unmapped += [f"{lora.path.name}: {k}" for k in lora.unmapped]
        unmapped += [f"{lora.path.name}: {m} (no such module in the base model)" for m in missing]
        for m in missing:
            del lora.weights[f"{m}.lora_A.weight"], lora.weights[f"{m}.lora_B.weight"]
    return loras, unmapped


def _provenance(op: str, inputs, model_dir, **extra) -> dict:
    """File metadata: what made it, from which files, on which base model (inspect reads it)."""
    base = {"studio_base_model": Path(model_dir).resolve().name} if model_dir else {}
    return {"studio_op": op, "studio_parents": ";".join(str(Path(p).name) for p in inputs),
            **base, **{f"studio_{k}": v for k, v in extra.items()}}


def merge(inputs: list[tuple[str | Path, float]], out: str | Path, model_dir: str | Path | None = None,
          rank: int | None = None, layout: str = "comfyui") -> ToolResult:
    """Σ strength_i · LoRA_i as one LoRA: concatenated (exact), or to `rank` by SVD."""
    if len(inputs) < 2:
        raise ValueError("a merge needs at least two LoRAs")
    if rank is not None and rank < 1:
        raise ValueError(f"the target rank must be at least 1, got {rank}")
    loras, unmapped = _load_checked([p for p, _ in inputs], model_dir)
    strengths = [float(s) for _, s in inputs]
    modules = sorted(set().union(*(lora.modules for lora in loras)))
    for module in modules:  # the same layer must have the same shape in every file
        shapes = {(lora.pair(module)[1].shape[0], lora.pair(module)[0].shape[1])
                  for lora in loras if module in lora.modules}
        if len(shapes) > 1:
            raise LoraFormatError(f"cannot merge: {module} has different shapes in the inputs "
                                  f"({', '.join(f'{o}x{i}' for o, i in sorted(shapes))}): another base model")
    weights, dropped, total, worst = {}, 0.0, 0.0, ("", 0.0)
    for module in modules:
        parts = [(lora.pair(module), s) for lora, s in zip(loras, strengths) if module in lora.modules]
        a = torch.cat([pa.float() for (pa, _), _ in parts], dim=0)
        b = torch.cat([pb.float() * s for (_, pb), s in parts], dim=1)
        if rank is not None:
            a, b, lost, kept = _truncate(a, b, rank)
            dropped, total = dropped + lost, total + lost + kept
            share = math.sqrt(lost / (lost + kept)) if lost + kept else 0.0
            worst = max(worst, (module, share), key=lambda w: w[1])
        weights[f"{module}.lora_A.weight"], weights[f"{module}.lora_B.weight"] = a, b
    extra = {"strengths": ",".join(map(str, strengths)), "mode": "svd" if rank else "concat"}
    path = write_lora(out, weights, layout, _provenance("merge", [p for p, _ in inputs], model_dir, **extra))
    error = math.sqrt(dropped / total) if rank is not None and total else (0.0 if rank else None)
    return ToolResult(path, len(modules), _rank_text(weights), unmapped, error,
                      worst if rank is not None else None)


def _truncate(a: torch.Tensor, b: torch.Tensor, rank: int):
    """The best rank-`rank` factors of B @ A without forming it: QR of both factors, SVD of
    the small core. Returns (A_r, B_r, ‖dropped‖², ‖kept‖²)."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    b_r = (qb @ u[:, :r]) * root
    a_r = root[:, None] * (vh[:r] @ qa.T)
    return a_r.float(), b_r.float(), float((s[r:] ** 2).sum()), float((s[:r] ** 2).sum())


def ema_weights(count: int, decay: float) -> list[float]:
    """The weight of each of `count` checkpoints (oldest first) in e = decay·e + (1−decay)·x,
    started at the oldest: they sum to 1 and favour the newest."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"the EMA decay must be between 0 and 1, got {decay}")
    return [decay ** (count - 1)] + [(1 - decay) * decay ** (count - 1 - i) for i in range(1, count)]


def average(paths: list[str | Path], out: str | Path, model_dir: str | Path | None = None,
            ema: float | None = None, layout: str = "comfyui") -> ToolResult:
    """The checkpoints (oldest first) averaged uniformly, or with EMA weights for `ema`."""
    if not paths:
        raise ValueError("nothing to average: no checkpoints given")
    loras, unmapped = _load_checked(paths, model_dir)
    first = loras[0]
    for lora in loras[1:]:
        if lora.modules != first.modules:
            diff = sorted(set(lora.modules) ^ set(first.modules))
            raise LoraFormatError(f"cannot average {lora.path.name} with {first.path.name}: "
                                  f"different modules (e.g. {diff[0]})")
        for module in first.modules:
            (a, b), (a0, b0) = lora.pair(module), first.pair(module)
            if a.shape != a0.shape or b.shape != b0.shape:
                raise LoraFormatError(f"cannot average {lora.path.name} (rank {a.shape[0]}) with "
                                      f"{first.path.name} (rank {a0.shape[0]}): mismatched ranks "
                                      f"or shapes at {module}")
    weights = ema_weights(len(loras), ema) if ema is not None else [1.0 / len(loras)] * len(loras)
    state = {key: sum(w * lora.weights[key].double() for w, lora in zip(weights, loras)).to(value.dtype)
             for key, value in first.weights.items()}
    extra = {"weights": ",".join(f"{w:.6g}" for w in weights),
             "mode": f"ema {ema}" if ema is not None else "uniform"}
    path = write_lora(out, state, layout, _provenance("average", paths, model_dir, **extra))
    return ToolResult(path, len(first.modules), _rank_text(state), unmapped, weights=weights)


def convert(path: str | Path, out: str | Path, layout: str,
            model_dir: str | Path | None = None) -> ToolResult:
    """The same LoRA under another tool's keys; keys that are no LoRA weight of the base
    model are reported and left out."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LoRA layout {layout!r}; choose {', '.join(LAYOUTS)}")
    (lora,), unmapped = _load_checked([path], model_dir)
    meta = {k: v for k, v in lora.metadata.items() if k not in ("format", "lora_rank", "lora_alpha")}
    meta.update(_provenance("convert", [path], model_dir, from_layout=lora.layout))
    written = write_lora(out, lora.weights, layout, meta)
    return ToolResult(written, len(lora.modules), _rank_text(lora.weights), unmapped)


BASE_MODEL_KEYS = ("studio_base_model", "base_model", "ss_base_model_version", "ss_sd_model_name",
                   "modelspec.architecture", "base_model_name_or_path")


def inspect(path: str | Path) -> dict:
    """Rank, alpha, targets, layers covered, key layout and the base model when the file says."""
    lora = load_lora(path)
    targets, blocks, other = set(), set(), set()
    for module in lora.modules:
        match = _BLOCK.match(module)
        if match:
            blocks.add(int(match.group(1)))
            targets.add(match.group(2))
        else:
            other.add(module)
    meta = lora.metadata
    alpha = lora.alpha if lora.alpha is not None else meta.get("lora_alpha")
    return {
        "path": str(lora.path),
        "layout": lora.layout,
        "rank": _rank_text(lora.weights),
        "alpha": float(alpha) if alpha is not None else None,
        # True: B already holds alpha/rank (the trainer's files); False: loaders apply the scale
        "alpha_folded_into_lora_B": meta.get("alpha_folded_into_lora_B") == "true",
        "targets": sorted(targets),
        "blocks": _ranges(sorted(blocks)),
        "other_modules": sorted(other),
        "modules": len(lora.modules),
        "parameters": sum(v.numel() for v in lora.weights.values()),
        "base_model": next((meta[k] for k in BASE_MODEL_KEYS if meta.get(k)), None),
        "unmapped_keys": lora.unmapped,
        "studio": {k[len("studio_"):]: v for k, v in meta.items() if k.startswith("studio_")},
    }


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    spans, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            spans.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(spans)
