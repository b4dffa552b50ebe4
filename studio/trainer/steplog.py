"""The run's JSON-lines files (metrics.jsonl, validation.jsonl): one object per line with a
"step", appended by rank 0 while the studio reads them."""
from __future__ import annotations

import json
from pathlib import Path


def append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return rows


def keep_through(path: Path, step: int) -> list[dict]:
    """After a resume, steps past the checkpoint are redone: drop their old lines. Returns
    the rows kept."""
    rows = [r for r in read(path) if r["step"] <= step]
    if path.is_file():
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows
