"""Attaching parquet shards to a project in place: counted, a sample checked, and recorded
(store.sources); the images are never copied into the project.

The rows stay in their files, so the studio can browse and check them and the trainer reads
them (--dataset_parquet), but nothing edits one row: CAN and CANNOT say so to the user.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..store import Store
from .checks import DEFAULT_MAX_PIXELS
from .parquet_rows import ParquetSource, Row, RowReader

CHECKED_ROWS = 100  # rows checked at attach, spread over the whole source

CAN = (
    "browse its rows (dataset rows), with each row's problems",
    "train from all of its rows: the trainer reads them in place, checks each, and skips and "
    "names the rows that cannot train",
    "keep validation pairs in the project (dataset split) for the sample edits and the "
    "validation loss of such a run",
)
CANNOT = (
    "edit, delete, re-split or rewrite the instructions of single rows: they are not pairs "
    "of the project; change the parquet files, or import the rows (dataset import --parquet)",
    "filter by score or take a row range (import with --min-score / --limit / --offset)",
    "see its rows in the Dataset tab's pair list, dataset validate or dataset export, which "
    "cover the project's stored pairs only",
    "attach more than one source to a project: attaching again replaces it",
)


def open_source(record: dict, progress: Callable[[int, int], None] | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ParquetSource:
    return ParquetSource(record["parquet"], record.get("columns") or None, flag="--columns",
                         max_pixels=max_pixels, progress=progress)


def checked_rows(source: ParquetSource, positions: list[tuple[int, int]]) -> list[Row]:
    reader = RowReader(source)
    try:
        return [source.check(reader.row(s, r)) for s, r in positions]
    finally:
        reader.close()


def require_parquet_spec(spec: str) -> str:
    """For callers others may reach (the browser app): a folder (only its *.parquet files are
    read) or a file or glob whose name ends in .parquet, so that nothing but parquet files is
    opened; the glob's matches end in .parquet too, as the name's last part is literal."""
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("enter the path of a parquet file, a folder of them or a glob")
    if not Path(spec).expanduser().is_dir() and not spec.lower().endswith(".parquet"):
        raise ValueError(f"only parquet files can be attached: {spec} is not a folder and does "
                         "not end in .parquet (give a folder, a .parquet file or a glob like "
                         "/data/*.parquet)")
    return spec


def sample(record: dict, n: int, spread: bool = False) -> tuple[ParquetSource, list[Row]]:
    """The first n rows of the attached source, or n spread over it; each checked."""
    source = open_source(record)
    return source, checked_rows(source, source.spread(n)) if spread else first_rows(source, n)


def notes(row: Row) -> list[str]:
    """Why it cannot train, or else its warnings."""
    if row.problems:
        return [f"cannot train: {row.problem}"]
    return [f"{i['level']}: {i['message']}" for i in row.issues if i["level"] != "info"]


def table_row(row: Row) -> list:
    """location, id, image sizes, prompt, problems: a row of a sample table."""
    sizes = ", ".join(f"{role} {w}×{h}" for role, (w, h) in row.sizes.items())
    return [row.where, row.sample_id, sizes, row.prompt, "; ".join(notes(row))]


def first_rows(source: ParquetSource, n: int) -> list[Row]:
    rows = []
    for row in source.rows():
        if len(rows) >= n:
            break
        rows.append(row)
    return rows


def attach_parquet(store: Store, project: str, spec: str, columns: str | None = None,
                   check: int = CHECKED_ROWS, progress: Callable[[int, int], None] | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict, list[Row]]:
    """Count the rows (progress per file), check `check` rows spread over them, record the
    source; returns (the record, the rows checked). Refused when no checked row can train
    (the columns are most likely wrong), so a bad source is never recorded."""
    store.require_project(project)
    location = str(Path(spec).expanduser().absolute())  # a glob stays a glob
    record = {"kind": "parquet", "parquet": location, "columns": columns or ""}
    source = open_source(record, progress, max_pixels)
    rows = checked_rows(source, source.spread(check))
    if rows and all(r.problems for r in rows):
        raise ValueError(f"none of the {len(rows)} rows checked can train (first: {rows[0].where}: "
                         f"{rows[0].problem}); check the columns (--columns)")
    record.update(files=len(source.shards), rows=source.total_rows, layouts=source.layouts,
                  checked=len(rows), checked_bad=sum(1 for r in rows if r.problems))
    return store.sources.attach(project, record), rows
