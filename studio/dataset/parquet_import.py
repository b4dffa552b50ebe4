"""Candidates from a parquet file, read one row group and one small batch at a time.

Known layouts (detected from the column names): UltraEdit (`source_image`, `edited_image`,
`edit_prompt`, `idx`, score columns such as `clip_sim_*` and `ssim`), InstructPix2Pix
(`input_image`, `edited_image`, `edit_prompt`) and MagicBrush (`source_img`, `target_img`,
`instruction`); or an explicit mapping `source=…,target=…,prompt=…[,id=…]`. Image cells may
be Hugging Face image structs ({bytes, path}), raw bytes, or a path: one of the files the
caller gives (files beside the parquet file, or for an upload only what was uploaded).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .report import ImportReport
from .sources import Candidate, FileSet, ImageRef, bytes_ref

LAYOUTS = {
    "UltraEdit": {"source": "source_image", "target": "edited_image", "prompt": "edit_prompt", "id": "idx"},
    "MagicBrush": {"source": "source_img", "target": "target_img", "prompt": "instruction", "id": "img_id"},
    "InstructPix2Pix": {"source": "input_image", "target": "edited_image", "prompt": "edit_prompt"},
}
ROLES = ("source", "target", "prompt", "id")
BATCH_ROWS = 32  # a batch of decoded image bytes stays a few MB


def parse_mapping(text: str | None, flag: str = "--columns") -> dict[str, str]:
    """`source=a,target=b,prompt=c` into a dict; roles are source, target, prompt, id.
    `flag` names the option in messages (the trainer's is --parquet_columns)."""
    mapping = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        role, sep, column = part.partition("=")
        if not sep or role.strip() not in ROLES or not column.strip():
            raise ValueError(f"{flag}: {part!r} should be ROLE=COLUMN with ROLE one of {', '.join(ROLES)}")
        mapping[role.strip()] = column.strip()
    return mapping


def parse_min_scores(items: list[str] | None) -> dict[str, float]:
    scores = {}
    for item in items or []:
        column, sep, value = item.partition("=")
        try:
            scores[column.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--min-score: {item!r} should be COLUMN=NUMBER") from None
        if not sep or not column.strip():
            raise ValueError(f"--min-score: {item!r} should be COLUMN=NUMBER")
    return scores


def choose_columns(schema: pa.Schema, explicit: dict[str, str],
                   flag: str = "--columns") -> tuple[str, dict[str, str]]:
    """(layout name, role -> column): a known layout's columns, overridden by `explicit`."""
    names = set(schema.names)
    layout_name, mapping = "custom", {}
    for name, layout in LAYOUTS.items():
        if {layout["source"], layout["target"], layout["prompt"]} <= names:
            layout_name, mapping = name, {r: c for r, c in layout.items() if c in names}
            break
    mapping.update(explicit)
    missing = [r for r in ("source", "target", "prompt") if r not in mapping]
    absent = [c for c in mapping.values() if c not in names]
    if missing or absent:
        raise ValueError(
            f"cannot tell which columns hold the source, target and instruction "
            f"({'missing ' + ', '.join(missing) if missing else 'no column ' + ', '.join(absent)}); "
            f"the file has: {', '.join(schema.names)}. Give {flag} source=…,target=…,prompt=…")
    return layout_name, mapping


def score_columns(schema: pa.Schema, mapping: dict[str, str]) -> list[str]:
    return [f.name for f in schema if f.name not in mapping.values()
            and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]


class ParquetImport:
    """Iterating yields candidates; `total` is the number of file rows it will look at."""

    def __init__(self, path: str | Path, report: ImportReport, files: FileSet, columns: str | None = None,
                 limit: int | None = None, offset: int = 0, min_scores: dict[str, float] | None = None):
        self.path = Path(path)
        self.files = files  # what a path in an image cell may name
        if not self.path.is_file():
            raise FileNotFoundError(f"parquet file not found: {self.path}")
        try:
            self.file = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{self.path}: not a readable parquet file ({exc})") from None
        self.report = report
        schema = self.file.schema_arrow
        self.layout, self.mapping = choose_columns(schema, parse_mapping(columns))
        self.scores = score_columns(schema, self.mapping)
        self.min_scores = min_scores or {}
        unknown = [c for c in self.min_scores if c not in self.scores]
        if unknown:
            raise ValueError(f"--min-score: no numeric column {', '.join(unknown)}; "
                             f"score columns: {', '.join(self.scores) or 'none'}")
        rows = self.file.metadata.num_rows
        self.start = min(max(0, offset), rows)
        self.end = rows if limit is None else min(rows, self.start + max(0, limit))
        self.total = self.end - self.start
        report.notes.append(f"{self.path.name}: {self.layout} layout, columns "
                            + ", ".join(f"{r}={c}" for r, c in self.mapping.items())
                            + f"; rows {self.start}-{self.end} of {rows}")

    def __iter__(self) -> Iterator[Candidate]:
        wanted = list(dict.fromkeys([*self.mapping.values(), *self.scores]))
        position = 0
        for group in range(self.file.num_row_groups):
            count = self.file.metadata.row_group(group).num_rows
            if position + count <= self.start or position >= self.end:
                position += count  # skipped without reading it
                continue
            for batch in self.file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=wanted):
                first = position
                position += batch.num_rows
                lo, hi = max(self.start - first, 0), min(self.end - first, batch.num_rows)
                if lo < hi:
                    yield from self._rows(batch.slice(lo, hi - lo), first + lo)
                if position >= self.end:
                    return

    def _rows(self, batch: pa.RecordBatch, first_row: int) -> Iterator[Candidate]:
        data = {name: batch.column(name).to_pylist() for name in batch.schema.names}
        for i in range(batch.num_rows):
            row = first_row + i
            label = f"{self.path.name} row {row}"
            scores = {c: data[c][i] for c in self.scores if data[c][i] is not None}
            if any(scores.get(c, float("-inf")) < v for c, v in self.min_scores.items()):
                self.report.filtered += 1
                continue
            m = self.mapping
            try:
                source, target = (self._image_ref(data[m[role]][i], m[role], label)
                                  for role in ("source", "target"))
            except LookupError as exc:
                self.report.error(label, str(exc))
                continue
            ident = data[m["id"]][i] if "id" in m else None
            yield Candidate(row=label, source=source, target=target,
                            instruction=str(data[m["prompt"]][i] or ""),
                            sample_id=row_sample_id(self.path, row, ident),
                            meta={"origin": f"{self.path.name}#{row}", "scores": scores})

    def _image_ref(self, value: Any, column: str, label: str) -> ImageRef:
        return cell_image(value, column, label, self.files, self.path.name)


def row_sample_id(path: Path, row: int, ident: Any) -> str:
    """A row's sample id: its id column's value, else the file's stem and the row index."""
    return str(ident) if ident is not None else f"{path.stem}_{row}"


def cell_image(value: Any, column: str, label: str, files: FileSet, base: str) -> ImageRef:
    """The image in one cell (an image struct, bytes, or a path that `files` resolves
    relative to `base`, the parquet file's name); LookupError says why there is none."""
    name = f"{label} {column}"
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes_ref(name, value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes_ref(name, bytes(value))
    if not isinstance(value, str) or not value:
        raise LookupError(f"no image in {column}")
    found = files.resolve(base, value)
    if found is None:
        raise LookupError(f"{column}: {files.absent}: {value}")
    return ImageRef(f"{name} ({value})", lambda: files.read(found))
