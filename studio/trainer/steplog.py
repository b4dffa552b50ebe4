"""The run's JSON-lines files (metrics.jsonl, validation.jsonl): one object per line with a
"step", written by rank 0 while the studio reads them."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .run_files import replacing

TAIL = 4096  # bytes; a row is a few hundred


def write(path: Path, row: dict) -> None:
    """Append a step's row. A step that has a row already (one redone after a resume)
    replaces it in place: rows are never dropped ahead of the steps that rewrite them."""
    if row["step"] > _last_step(path):
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return
    rows = sorted([r for r in read(path) if r["step"] != row["step"]] + [row],
                  key=lambda r: r["step"])
    with replacing(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _last_step(path: Path) -> float:
    """The last row's step; infinity when the last line is unfinished (a kill mid-write), so
    that the next write rewrites the file without it."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - TAIL))
            tail = f.read()
    except FileNotFoundError:
        return -math.inf
    if not tail:
        return -math.inf
    try:
        return json.loads(tail.splitlines()[-1])["step"] if tail.endswith(b"\n") else math.inf
    except (ValueError, KeyError):
        return math.inf


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
