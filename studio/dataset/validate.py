"""Validating a project's pairs: every pair on demand (`validate_project`), and at launch
only what may have changed (`check_for_launch`).

A full check of a pair (its row, its files, duplicates) at some max_pixels is stored with
its issues (the `checked_pixels` mark); editing the pair clears the mark. A launch re-checks
the pairs not marked at its max_pixels, plus the whole-project checks that no mark can
vouch for, which read no image: duplicates (one query) and missing files (one listing per
image folder).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from ..store import Store
from . import difference
from .checks import (DEFAULT_MAX_PIXELS, REPEATED_MAX_SIMILARITY, REPEATED_MIN_PAIRS,
                     REPEATED_PREFIX, identical_issues, issue, pair_issues, repeated_instruction_issue)

# Pairs of one repeated instruction whose changes are compared: enough to tell like from unlike.
REPEATED_SAMPLE = 24


@dataclass
class ValidationReport:
    project: str
    pairs: int = 0
    ok: int = 0
    warnings: int = 0
    errors: int = 0
    problems: list[dict] = field(default_factory=list)  # {id, sample_id, level, message}
    rechecked: int = 0  # pairs whose issues were computed now (the others' were stored)

    def as_dict(self) -> dict:
        return asdict(self)

    def add(self, pair: dict, issues: list[dict]) -> None:
        levels = {i["level"] for i in issues}
        self.pairs += 1
        if "error" in levels:
            self.errors += 1
        elif "warning" in levels:
            self.warnings += 1
        else:
            self.ok += 1
        self.problems += [{"id": pair["id"], "sample_id": pair["sample_id"], **i}
                          for i in issues if i["level"] != "info"]

    def summary(self) -> str:
        return (f"{self.project}: {self.pairs} pairs, {self.ok} ok, {self.warnings} with warnings, "
                f"{self.errors} with errors")


def validate_project(store: Store, project: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Recompute every pair's issues (sizes, instruction, missing files, duplicates) and store them."""
    report = ValidationReport(project)
    _check(store, project, max_pixels, report, _duplicates(store, project),
           _Files(store.project_dir(project)), progress=progress,
           repeated=repeated_instructions(store, project))
    report.rechecked = report.pairs
    return report


def check_for_launch(store: Store, project: str, max_pixels: int) -> ValidationReport:
    """Every pair's issues as a run at `max_pixels` would see them, computed again only where
    the stored ones may be stale. Counts cover every pair; `problems` lists the errors (what
    stops a launch), not the warnings of pairs that were not re-checked."""
    pairs = store.pairs
    # Marks cannot vouch for files or for other pairs: pairs with a file gone, pairs in a
    # duplicate group, and stored errors (a file may be back) are checked again.
    duplicates, files = _duplicates(store, project), _Files(store.project_dir(project))
    stale = missing_files(store, project, files) | set(duplicates)
    stale |= {row["id"] for row in pairs.stored_issues(project, "error")}
    pairs.set_checked(stale, None)
    checked = ValidationReport(project)
    # Larger batches than a validation with a progress bar: each is a commit (an fsync).
    # A repeated instruction's warning is validate_project's (it compares images across
    # pairs): a pair re-checked here keeps the one it had while its text is unchanged.
    _check(store, project, max_pixels, checked, duplicates, files, only_unchecked=True,
           batch_size=5000, repeated=_stored_repeated(store, project))
    counts = pairs.counts(project)
    report = ValidationReport(project, counts["total"], counts["ok"], counts["warning"],
                              counts["error"], rechecked=checked.pairs)
    report.problems = [{"id": row["id"], "sample_id": row["sample_id"], **found}
                       for row in pairs.stored_issues(project, "error")
                       for found in row["issues"] if found["level"] == "error"]
    return report


class _Files:
    """Which image files are on disk, from one listing per folder (images/ab/…): metadata
    only, no image opened or stat'ed one by one."""

    def __init__(self, folder):
        self.folder = folder
        self.listed: dict[str, set[str]] = {}

    def __contains__(self, relative: str | None) -> bool:
        parent, _, name = (relative or "").rpartition("/")
        if parent not in self.listed:
            self.listed[parent] = _files_in(self.folder / parent)
        # A file written after its folder was listed (an import meanwhile) is not missing:
        # what the listing lacks is asked for again, one stat each (missing files are rare).
        return bool(name) and (name in self.listed[parent] or (self.folder / relative).is_file())


def _files_in(folder) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except OSError:  # no such folder: none of its files are there
        return set()


def missing_files(store: Store, project: str, files: _Files | None = None) -> set[int]:
    """The ids of pairs with an image file that is not on disk."""
    files = files or _Files(store.project_dir(project))
    return {pair_id for pair_id, paths in store.pairs.image_paths(project)
            if not all(path in files for path in paths)}


def _check(store: Store, project: str, max_pixels: int, report: ValidationReport,
           duplicates: dict[int, str], files: _Files, only_unchecked: bool = False,
           progress: Callable[[int, int], None] | None = None, batch_size: int = 1000,
           repeated: dict[int, dict] | None = None) -> None:
    """Check every pair (or those not checked at max_pixels since they changed), store the
    issues and the mark, and add each pair to the report."""
    pairs = store.pairs
    total = pairs.count(project)
    last = 0
    while True:
        # A batch is read, checked and written back in one transaction, so an instruction
        # rewritten meanwhile never gets the issues of its old text.
        with store.write():
            batch = pairs.batch_after(project, last, batch_size,
                                      not_checked_at=max_pixels if only_unchecked else None)
            found = [_issues(store, project, pair, files, duplicates.get(pair["id"]), max_pixels)
                     + _repeated_of(pair, repeated or {}) for pair in batch]
            pairs.set_issues([(pair["id"], issues) for pair, issues in zip(batch, found)
                              if issues != pair["issues"]], checked_pixels=max_pixels)
            pairs.set_checked([pair["id"] for pair, issues in zip(batch, found)
                               if issues == pair["issues"]], max_pixels)
        if not batch:
            return
        for pair, issues in zip(batch, found):
            report.add(pair, issues)
        last = batch[-1]["id"]
        if progress:
            progress(report.pairs, total)


def _duplicates(store: Store, project: str) -> dict[int, str]:
    """Pair id -> the sample ids of the pairs sharing both its images."""
    return {pair_id: ", ".join(s for i, s in group if i != pair_id)
            for group in store.pairs.duplicate_groups(project) for pair_id, _ in group}


def _repeated_of(pair: dict, repeated: dict[int, dict]) -> list[dict]:
    """The pair's repeated-instruction warning, while it still has the text it names."""
    found = repeated.get(pair["id"])
    if found and repr((pair["instruction"] or "")[:60]) in found["message"]:
        return [found]
    return []


def _stored_repeated(store: Store, project: str) -> dict[int, dict]:
    return {row["id"]: found for row in store.pairs.stored_issues(project, "warning")
            for found in row["issues"] if found["message"].startswith(REPEATED_PREFIX)}


def repeated_instructions(store: Store, project: str) -> dict[int, dict]:
    """Pair id -> the warning for an instruction that many pairs share while their changes
    differ (compared on a sample of each group; unreadable images are left out)."""
    out = {}
    for text, count, sample in store.pairs.shared_instructions(project, REPEATED_MIN_PAIRS,
                                                               REPEATED_SAMPLE):
        signatures = []
        for pair in sample:
            try:
                signatures.append(difference.measure_files(
                    store.pairs.path(project, pair["source_path"]),
                    store.pairs.path(project, pair["target_path"])).signature)
            except Exception:  # noqa: BLE001 - the pair's own check reports its files
                continue
        couples = [(i, j) for i in range(len(signatures)) for j in range(i + 1, len(signatures))]
        if not couples:
            continue
        mean = sum(difference.similarity(signatures[i], signatures[j])
                   for i, j in couples) / len(couples)
        if mean < REPEATED_MAX_SIMILARITY:
            warning = repeated_instruction_issue(text, count, mean)
            out.update({pair_id: warning for pair_id in store.pairs.ids_with_instruction(project, text)})
    return out


def _issues(store: Store, project: str, pair: dict, files: _Files, duplicate_of: str | None,
            max_pixels: int) -> list[dict]:
    issues = pair_issues(pair, max_pixels)
    present = True
    for role, relative in [("source", pair["source_path"]), ("target", pair["target_path"]),
                           *[("extra source", p) for p in pair["extra_sources"]]]:
        if relative not in files:
            present = False
            issues.append(issue("error", f"{role} image file is missing: {relative}"))
    same_file = pair.get("source_hash") and pair.get("source_hash") == pair.get("target_hash")
    if present and not same_file:  # the same file is its own warning (pair_issues)
        try:
            change = difference.measure_files(store.pairs.path(project, pair["source_path"]),
                                              store.pairs.path(project, pair["target_path"]))
            issues += identical_issues(change.peak_cell)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds on a corrupt file
            issues.append(issue("error", f"the images cannot be read ({exc}): import the pair "
                                         f"again or remove it"))
    if duplicate_of:
        issues.append(issue("warning", f"duplicate: same source and target images as {duplicate_of}"))
    return issues
