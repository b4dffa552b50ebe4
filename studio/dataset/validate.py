"""Validating a whole project on demand: re-check every pair and record what was found."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from ..store import Store
from .checks import DEFAULT_MAX_PIXELS, issue, pair_issues


@dataclass
class ValidationReport:
    project: str
    pairs: int = 0
    ok: int = 0
    warnings: int = 0
    errors: int = 0
    problems: list[dict] = field(default_factory=list)  # {id, sample_id, level, message}

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
    pairs = store.pairs
    report = ValidationReport(project)
    total = pairs.count(project)
    duplicates = {}
    for group in pairs.duplicate_groups(project):
        for pair_id, _ in group:
            duplicates[pair_id] = ", ".join(s for i, s in group if i != pair_id)
    last = 0
    while True:
        # A batch is read, checked and written back in one transaction, so an instruction
        # rewritten meanwhile never gets the issues of its old text.
        with store.write():
            batch = pairs.batch_after(project, last)
            found = [_issues(pairs, project, pair, duplicates.get(pair["id"]), max_pixels)
                     for pair in batch]
            pairs.set_issues([(pair["id"], issues) for pair, issues in zip(batch, found)
                              if issues != pair["issues"]])
        if not batch:
            return report
        for pair, issues in zip(batch, found):
            report.add(pair, issues)
        last = batch[-1]["id"]
        if progress:
            progress(report.pairs, total)


def _issues(pairs, project: str, pair: dict, duplicate_of: str | None, max_pixels: int) -> list[dict]:
    issues = pair_issues(pair, max_pixels)
    for role, relative in [("source", pair["source_path"]), ("target", pair["target_path"]),
                           *[("extra source", p) for p in pair["extra_sources"]]]:
        if not relative or not pairs.path(project, relative).is_file():
            issues.append(issue("error", f"{role} image file is missing: {relative}"))
    if duplicate_of:
        issues.append(issue("warning", f"duplicate: same source and target images as {duplicate_of}"))
    return issues
