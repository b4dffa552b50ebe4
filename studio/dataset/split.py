"""Holding pairs out for validation: the sample edits and the validation loss use them."""
from __future__ import annotations

import random

from ..store import Store


def hold_out(store: Store, project: str, count: int, seed: int = 0) -> list[int]:
    """Mark `count` training pairs, drawn at random (reproducibly for a seed), as validation;
    pairs with errors are never drawn. Returns their ids."""
    if count < 1:
        raise ValueError("hold out at least one pair")
    with store.write():  # the pairs drawn are still training pairs when they are marked
        candidates = [p["id"] for p in store.pairs.iterate(project, split="train")
                      if p["status"] != "error"]
        if count >= len(candidates):
            raise ValueError(f"{project!r} has {len(candidates)} usable training pair(s); holding "
                             f"out {count} would leave nothing to train on")
        chosen = sorted(random.Random(seed).sample(candidates, count))
        store.pairs.set_split(project, chosen, "validation")
    return chosen


def parse_count(text: str, total: int) -> int:
    """'5' -> 5; '10%' -> 10% of `total`, at least 1."""
    text = str(text).strip()
    try:
        if text.endswith("%"):
            return max(1, round(total * float(text[:-1]) / 100))
        return int(text)
    except ValueError:
        raise ValueError(f"expected a number of pairs or a percentage like 10%, got {text!r}") from None
