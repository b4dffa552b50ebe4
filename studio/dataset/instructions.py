"""Rewriting many instructions at once: a trigger word in front, a suffix, a word replaced.

Applies to every pair of a project, or to those an instruction search finds (what the
Dataset tab shows). Changed pairs are re-checked, as an edit of one instruction is.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

from ..store import Store
from .checks import pair_issues
from .ingest import mark_duplicates


@dataclass
class Rewrite:
    prefix: str = ""
    suffix: str = ""
    find: str = ""
    replace: str = ""

    def __post_init__(self):
        if not (self.prefix or self.suffix or self.find):
            raise ValueError("nothing to change: give a prefix, a suffix or a text to replace")

    def apply(self, text: str) -> str:
        if self.find:
            text = text.replace(self.find, self.replace)
        # A prefix goes on once, so that applying it again changes nothing.
        if self.prefix and not text.startswith(self.prefix):
            text = self.prefix + text
        if self.suffix and not text.endswith(self.suffix):
            text = text + self.suffix
        return text


def set_instruction(store: Store, project: str, pair_id: int, text: str) -> dict:
    """One pair's new instruction, re-checked in the same transaction; returns the pair."""
    with store.write():
        pair = store.pairs.require(project, pair_id)
        store.pairs.set_instructions([(pair_id, text, pair_issues({**pair, "instruction": text}))])
    return store.pairs.require(project, pair_id)


def rewrite_instructions(store: Store, project: str, rewrite: Rewrite, search: str | None = None,
                         dry_run: bool = False) -> list[tuple[str, str, str]]:
    """Returns (sample_id, old, new) for every instruction that changes (or would).

    Reads and writes in one transaction: a pair edited or imported meanwhile by another
    process is either rewritten from its current text or not yet there, never written
    back from a stale read."""
    changes, updates = [], []
    with nullcontext() if dry_run else store.write():
        for pair in store.pairs.iterate(project, search=search or None):
            old = pair["instruction"] or ""
            new = rewrite.apply(old)
            if new != old:
                changes.append((pair["sample_id"], old, new))
                updates.append((pair["id"], new, pair_issues({**pair, "instruction": new})))
        if updates and not dry_run:
            store.pairs.set_instructions(updates)
            mark_duplicates(store, project)  # re-checking a pair drops its duplicate warning
    return changes
