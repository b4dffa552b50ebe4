"""Reviewing instruction proposals: accept (as proposed or edited), reject, accept all,
undo; and the JSONL file a CLI user reviews in an editor (`--dry-run`, `--apply`).

A person's instruction (any non-empty text not from an accepted proposal) is never replaced
unless `overwrite` is asked for: its proposal stays pending and is named in the result.
Every applied text keeps the one it replaced (Pairs.set_instructions), so it can be undone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..store import Store
from ..store.proposals import ACCEPTED, REJECTED
from .checks import REPEATED_MIN_PAIRS, pair_issues
from .ingest import mark_duplicates

DECISIONS = ("accept", "reject", "pending")
SCOPES = ("missing", "search", "all")
# Instructions shorter than this many words ("edited", a file name) teach no style.
STYLE_MIN_WORDS = 3
STYLE_CANDIDATES = 200


@dataclass
class Applied:
    accepted: list[str] = field(default_factory=list)   # sample ids
    rejected: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)       # "sample_id: why" (still pending)

    def summary(self) -> str:
        text = f"{len(self.accepted)} accepted, {len(self.rejected)} rejected"
        if self.kept:
            text += f", {len(self.kept)} kept pending: " + "; ".join(self.kept[:5])
            text += " …" if len(self.kept) > 5 else ""
        return text


def person_wrote(pair: dict) -> bool:
    return bool((pair.get("instruction") or "").strip()) and pair.get("instruction_origin") != "writer"


def pairs_to_write(store: Store, project: str, scope: str = "missing",
                   search: str | None = None) -> list[int]:
    """The ids of the pairs to propose for: those with no instruction, those the search
    finds, or all."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if scope == "search" and not (search or "").strip():
        raise ValueError("give a search text for the pairs to write instructions for")
    rows = store.pairs.iterate(project, search=search if scope == "search" else None,
                               columns=["instruction"])
    return [r["id"] for r in rows if scope != "missing" or not (r["instruction"] or "").strip()]


def style_examples(store: Store, project: str, count: int = 5) -> list[str]:
    """A few of the project's own instructions for the writer to imitate: a person's, of
    some words, distinct, and none of the placeholders many pairs share."""
    shared = {text for text, _, _ in store.pairs.shared_instructions(project, REPEATED_MIN_PAIRS, 0)}
    seen: list[str] = []
    for row in store.pairs.iterate(project, columns=["instruction", "instruction_origin"]):
        text = (row["instruction"] or "").strip()
        if (person_wrote(row) and len(text.split()) >= STYLE_MIN_WORDS and text not in shared
                and text not in seen):
            seen.append(text)
            if len(seen) >= STYLE_CANDIDATES:
                break
    step = max(1, len(seen) // count)  # spread over the project, the same picks every time
    return seen[::step][:count]


def accept(store: Store, project: str, decisions: dict[int, str | None],
           overwrite: bool = False) -> Applied:
    """`decisions`: proposal id -> the text to apply (None: as proposed). One transaction."""
    result, updates, texts = Applied(), [], {}
    with store.write():
        for proposal_id, text in decisions.items():
            proposal = store.proposals.get(project, proposal_id)
            pair = store.pairs.get(project, proposal["pair_id"])
            if pair is None:
                result.kept.append(f"proposal {proposal_id}: its pair was deleted")
                continue
            if proposal["status"] != "pending":
                result.kept.append(f"{pair['sample_id']}: proposal {proposal_id} is already "
                                   f"{proposal['status']}")
                continue
            text = (proposal["text"] if text is None else text).strip()
            if not text:
                result.kept.append(f"{pair['sample_id']}: empty text, not applied")
                continue
            if person_wrote(pair) and not overwrite and text != pair["instruction"]:
                result.kept.append(f"{pair['sample_id']}: a person wrote its instruction "
                                   f"(replace it with overwrite)")
                continue
            updates.append((pair["id"], text, pair_issues({**pair, "instruction": text})))
            texts[proposal_id] = text
            result.accepted.append(pair["sample_id"])
        if updates:
            store.pairs.set_instructions(updates, origin="writer")
            store.proposals.decide(texts, ACCEPTED, texts)
            mark_duplicates(store, project)  # re-checking a pair drops its duplicate warning
    return result


def reject(store: Store, project: str, proposal_ids: list[int]) -> Applied:
    result = Applied()
    with store.write():
        for proposal_id in proposal_ids:
            proposal = store.proposals.get(project, proposal_id)
            pair = store.pairs.get(project, proposal["pair_id"])
            result.rejected.append(pair["sample_id"] if pair else f"proposal {proposal_id}")
        store.proposals.decide(proposal_ids, REJECTED)
    return result


def accept_all(store: Store, project: str, overwrite: bool = False) -> Applied:
    ids = [p["id"] for p in store.proposals.pending(project, limit=10**9)]
    return accept(store, project, dict.fromkeys(ids), overwrite)


def undo(store: Store, project: str, pair_id: int) -> str:
    """Put back a pair's previous instruction; a sentence saying what was done."""
    store.pairs.require(project, pair_id)
    change = store.pairs.undo_instruction(pair_id, pair_issues)
    if change is None:
        return "Nothing to undo: this pair's instruction was never changed here."
    return f"Undone: {change['new']!r} is back to {change['previous']!r}."


# -- the review file ----------------------------------------------------------
def write_review_file(store: Store, project: str, path: str | Path) -> int:
    """Every pending proposal as one JSON line a person can edit: `proposed` (the text to
    apply) and `decision` (accept, reject or pending). Returns the line count."""
    rows = store.proposals.pending(project, limit=10**9)
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps({
                "proposal_id": row["id"], "sample_id": row["sample_id"],
                "current": row["instruction"], "person_wrote": person_wrote(row),
                "proposed": row["text"], "decision": "accept"}, ensure_ascii=False) + "\n")
    return len(rows)


def apply_review_file(store: Store, project: str, path: str | Path,
                      overwrite: bool = False) -> Applied:
    """Apply a reviewed file; every line is checked before anything is written, and a bad
    line is named (nothing applied)."""
    accepts, rejects = {}, []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            proposal_id = int(entry["proposal_id"])
            decision = entry.get("decision", "accept")
            text = entry.get("proposed")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {number}: not a review line ({exc}); each line needs "
                             f"proposal_id, proposed and decision") from None
        if decision not in DECISIONS:
            raise ValueError(f"{path} line {number}: decision must be one of "
                             f"{', '.join(DECISIONS)}, not {decision!r}")
        if decision == "accept" and not isinstance(text, str):
            raise ValueError(f"{path} line {number}: 'proposed' must be the text to apply")
        store.proposals.get(project, proposal_id)  # KeyError names an unknown proposal
        if decision == "accept":
            accepts[proposal_id] = text
        elif decision == "reject":
            rejects.append(proposal_id)
    with store.write():
        result = accept(store, project, accepts, overwrite)
        result.rejected = reject(store, project, rejects).rejected
    return result
