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
        ratio = max(source_aspect / target_aspect, target_aspect / source_aspect)
        out.append(issue("warning", f"source {source[0]}×{source[1]} and target {target[0]}×"
                                    f"{target[1]} have different aspect ratios "
                                    f"({source_aspect:.2f} vs {target_aspect:.2f}); {trains}: "
                                    f"to line up, one is stretched {ratio - 1:.0%} or loses "
                                    f"{1 - 1 / ratio:.0%} of its area to a crop. Crop the "
                                    f"source to the target's framing, or remove the pair"))
    else:
        out.append(issue("warning", f"source {source[0]}×{source[1]} and target {target[0]}×"
                                    f"{target[1]} differ in size; {trains}"))
    return out


# Mean cell difference under which a pair counts as unchanged (JPEG re-encoding alone
# moves pixels by about 1/255 on average).
IDENTICAL_PEAK = 0.015
# One instruction on this many pairs (or more) whose changes differ is likely a placeholder.
REPEATED_MIN_PAIRS = 5
# Mean change-signature similarity under which the pairs' changes count as different.
REPEATED_MAX_SIMILARITY = 0.8


def identical_issues(peak_cell: float) -> list[dict[str, str]]:
    """`peak_cell`: the largest mean difference of any cell (difference.Change.peak_cell)."""
    if peak_cell >= IDENTICAL_PEAK:
        return []
    return [issue("warning", f"source and target are nearly identical (at most {peak_cell:.1%} "
                             f"difference in any part): nothing to learn. Check that the target "
                             f"is the edited image, or remove the pair")]


REPEATED_PREFIX = "the instruction "


def repeated_instruction_issue(text: str, pairs: int, similarity: float) -> dict[str, str]:
    return issue("warning", f"{REPEATED_PREFIX}{text[:60]!r} is shared by {pairs} pairs whose "
                            f"changes differ (similarity {similarity:.2f}): the model cannot "
                            f"learn which change it asks for. Write what changed in each pair, "
                            f"or propose instructions from the images "
                            f"(dataset instructions --write --search {text[:30]!r})")


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
