"""Where and how much a pair's target differs from its source.

Both images are compared at a small common size (the target's frame, the source resized
onto it), so a pair with different sizes still compares pixel by pixel as the model sees
the edit. The view is a heat map over the dimmed target; the numbers feed the checks
(nearly identical pairs, one instruction for unlike changes) in checks.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

COMPARE_SIDE = 64  # the longer side the numbers are measured at: cheap, and JPEG noise averages out
GRID = 8           # a change's signature: mean difference per cell of an 8×8 grid


@dataclass(frozen=True)
class Change:
    mean: float           # mean absolute difference, 0..1
    peak_cell: float      # the largest cell mean (a small local edit shows here)
    signature: np.ndarray  # GRID×GRID cell means, where the change is


def _load(path: str | Path, side: int) -> Image.Image:
    image = Image.open(path)
    image.draft("RGB", (side, side))  # JPEG decodes at reduced size
    return image.convert("RGB")


def _arrays(source: Image.Image, target: Image.Image, side: int) -> tuple[np.ndarray, np.ndarray]:
    scale = side / max(target.size)
    size = (max(GRID, round(target.width * scale)), max(GRID, round(target.height * scale)))
    a = np.asarray(source.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255
    b = np.asarray(target.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255
    return a, b


def measure(source: Image.Image, target: Image.Image, side: int = COMPARE_SIDE) -> Change:
    a, b = _arrays(source, target, side)
    diff = np.abs(a - b).mean(axis=2)
    rows = np.array_split(np.arange(diff.shape[0]), GRID)
    cols = np.array_split(np.arange(diff.shape[1]), GRID)
    cells = np.array([[diff[np.ix_(r, c)].mean() for c in cols] for r in rows])
    return Change(float(diff.mean()), float(cells.max()), cells)


def measure_files(source: str | Path, target: str | Path) -> Change:
    """OSError or Pillow's errors when a file cannot be read: the caller names the pair."""
    return measure(_load(source, COMPARE_SIDE * 2), _load(target, COMPARE_SIDE * 2))


def difference_view(source: Image.Image, target: Image.Image, side: int = 256) -> Image.Image:
    """The target dimmed to grey, with the changed pixels in red to yellow by how much."""
    a, b = _arrays(source, target, side)
    diff = np.abs(a - b).mean(axis=2)
    strength = np.clip(diff / max(float(diff.max()), 0.05), 0, 1)[..., None]  # 5 %: the scale's floor
    grey = b.mean(axis=2, keepdims=True) * 0.35
    heat = np.concatenate([np.ones_like(strength), strength, np.zeros_like(strength)], axis=2)
    view = grey * (1 - strength) + heat * strength
    return Image.fromarray((np.clip(view, 0, 1) * 255).astype(np.uint8), "RGB")


def difference_view_files(source: str | Path, target: str | Path, side: int = 256) -> Image.Image:
    return difference_view(_load(source, side * 2), _load(target, side * 2), side)


def similarity(one: np.ndarray, other: np.ndarray) -> float:
    """Cosine similarity of two change signatures: 1 when the same places changed alike."""
    x, y = one.ravel(), other.ravel()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / norm) if norm else 1.0
