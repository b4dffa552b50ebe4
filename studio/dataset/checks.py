"""Checks on one pair: sizes as the trainer will see them, and the instruction.

An issue is {"level": "info" | "warning" | "error", "message": str}. Image-level notes
(conversions) are recorded at import in meta["notes"] and carried along as info.
"""
from __future__ import annotations

import math
from typing import Any

DEFAULT_MAX_PIXELS = 1048576  # the reference recipe's max_pixels
SIZE_MULTIPLE = 16            # Qwen-Image latents: 8× VAE downscale, then 2×2 patches
# The edit pipelines do not truncate prompts (QwenImageEditPipeline.encode_prompt ignores
# max_sequence_length), so length is no error; this long is rarely an edit instruction.
MAX_INSTRUCTION_CHARS = 1000
MIN_SIDE = 16


def train_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The size the trainer (and DiffSynth-Studio's UnifiedDataset, ImageCropAndResize.
    get_height_width) trains an image at: scaled down to max_pixels, sides floored to 16s."""
    if width * height > max_pixels:
        scale = math.sqrt(width * height / max_pixels)
        width, height = int(width / scale), int(height / scale)
    return width // SIZE_MULTIPLE * SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE


def issue(level: str, message: str) -> dict[str, str]:
    return {"level": level, "message": message}


def size_issues(source: tuple[int, int], target: tuple[int, int],
                max_pixels: int = DEFAULT_MAX_PIXELS) -> list[dict[str, str]]:
    out = []
    for role, (w, h) in (("source", source), ("target", target)):
        if min(train_size(w, h, max_pixels)) < MIN_SIDE:
            out.append(issue("error", f"{role} {w}×{h} is too small to train on "
                                      f"(under {MIN_SIDE} pixels after resizing)"))
    if source == target or out:
        return out
    trains = (f"with max_pixels={max_pixels} the source trains at "
              f"{'×'.join(map(str, train_size(*source, max_pixels)))} and the target at "
              f"{'×'.join(map(str, train_size(*target, max_pixels)))}")
    source_aspect, target_aspect = source[0] / source[1], target[0] / target[1]
    if abs(source_aspect / target_aspect - 1) > 0.01:
        out.append(issue("warning", f"source {source[0]}×{source[1]} and target {target[0]}×"
                                    f"{target[1]} have different aspect ratios "
                                    f"({source_aspect:.2f} vs {target_aspect:.2f}); {trains}"))
    else:
        out.append(issue("warning", f"source {source[0]}×{source[1]} and target {target[0]}×"
                                    f"{target[1]} differ in size; {trains}"))
    return out


def instruction_issues(text: str) -> list[dict[str, str]]:
    if not (text or "").strip():
        return [issue("error", "empty instruction")]
    if len(text) > MAX_INSTRUCTION_CHARS:
        return [issue("warning", f"instruction is {len(text)} characters long (over "
                                 f"{MAX_INSTRUCTION_CHARS}): is it a caption or pasted text "
                                 f"rather than an edit instruction?")]
    return []


def pair_issues(pair: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[dict[str, str]]:
    """Every issue of a stored pair row that can be judged from the row alone."""
    notes = [issue("info", note) for note in (pair.get("meta") or {}).get("notes", [])]
    out = notes + instruction_issues(pair.get("instruction") or "")
    if pair.get("source_width") and pair.get("target_width"):
        out += size_issues((pair["source_width"], pair["source_height"]),
                           (pair["target_width"], pair["target_height"]), max_pixels)
    if pair.get("source_hash") and pair.get("source_hash") == pair.get("target_hash"):
        out.append(issue("warning", "source and target are the same image: nothing to learn"))
    return out
