"""What an import did: counts, notes, and every rejected row or unmatched file by name."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ImportReport:
    added: int = 0
    already_present: int = 0
    filtered: int = 0                                            # dropped by a score filter
    errors: list[tuple[str, str]] = field(default_factory=list)  # (row, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)           # files that formed no pair
    notes: list[str] = field(default_factory=list)               # e.g. a convention swap

    def error(self, row: str, reason: str) -> None:
        self.errors.append((row, reason))

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.added} pairs added", f"{self.already_present} already present"]
        if self.filtered:
            parts.append(f"{self.filtered} filtered out by score")
        parts += [f"{len(self.errors)} rejected", f"{len(self.warnings)} warnings"]
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} unmatched files")
        return ", ".join(parts)

    def lines(self, limit: int = 50) -> list[str]:
        """The report as text lines, long lists cut at `limit` entries each."""
        out = [f"note: {n}" for n in self.notes] + [self.summary()]
        for title, items in (("rejected", [f"{r}: {m}" for r, m in self.errors]),
                             ("warning", [f"{r}: {m}" for r, m in self.warnings]),
                             ("unmatched", self.unmatched)):
            out += [f"{title}: {item}" for item in items[:limit]]
            if len(items) > limit:
                out.append(f"{title}: … and {len(items) - limit} more")
        return out
