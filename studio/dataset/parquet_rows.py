"""Parquet shards read in place, never imported: the files a spec names, and their rows read
one small batch at a time, each checked as an import would check its pair.

Shared by the trainer (--dataset_parquet) and a project's attached source. Columns are found
as the importer finds them (parquet_import.choose_columns), image cells read as it reads them
(cell_image), and a row cannot train when an image does not decode whole
(images.decoded_size) or its pair would be an error in the store (checks.pair_issues).
"""
from __future__ import annotations

import bisect
import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .checks import DEFAULT_MAX_PIXELS, pair_issues
from .images import BadImage, decoded_size
from .parquet_import import BATCH_ROWS, cell_image, choose_columns, parse_mapping, row_sample_id
from .sources import FolderFiles

IMAGE_ROLES = ("source", "target")


def parquet_files(spec: str | Path) -> list[Path]:
    """A file, every *.parquet under a folder (dot-named folders left out), or a glob's
    files; sorted by path, so the rows' order never depends on the file system."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*.parquet") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not files:
        raise FileNotFoundError(f"no parquet files at {spec} (give a file, a folder or a glob)")
    return sorted(p.resolve() for p in files)


@dataclass
class Shard:
    path: Path
    label: str                  # in messages: its path below the shards' common folder
    layout: str
    mapping: dict[str, str]     # role -> column
    group_rows: list[int]       # rows per row group
    files: FolderFiles          # what a path in an image cell may name
    starts: list[int] = field(init=False)  # each row group's first row

    def __post_init__(self):
        self.starts = [sum(self.group_rows[:g]) for g in range(len(self.group_rows))]

    @property
    def rows(self) -> int:
        return sum(self.group_rows)

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(self.mapping.values()))


@dataclass
class Row:
    shard: int
    row: int                               # its index in its file
    where: str                             # "<file> row <n>", as the importer names rows
    prompt: str
    sample_id: str
    images: dict[str, bytes]               # role -> bytes; absent when its cell has no image
    problems: list[str] = field(default_factory=list)  # why it cannot train
    issues: list[dict] = field(default_factory=list)   # checks.pair_issues, once checked
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems) or None


class ParquetSource:
    """The shards of a spec (file, folder or glob), with their layouts and row counts; only
    the metadata is read here. `flag` names the columns option in messages."""

    def __init__(self, spec: str | Path, columns: str | None = None, flag: str = "--columns",
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 progress: Callable[[int, int], None] | None = None):
        self.spec, self.max_pixels = str(spec), max_pixels
        paths = parquet_files(spec)
        explicit = parse_mapping(columns, flag)
        root = Path(os.path.commonpath([p.parent for p in paths]))
        self.shards = []
        for done, path in enumerate(paths, start=1):
            self.shards.append(_shard(path, path.relative_to(root).as_posix(), explicit, flag))
            if progress:
                progress(done, len(paths))

    @property
    def total_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def layouts(self) -> list[str]:
        return sorted({s.layout for s in self.shards})

    def groups(self) -> list[tuple[int, int]]:
        """Every (shard, row group), in row order."""
        return [(s, g) for s, shard in enumerate(self.shards) for g in range(len(shard.group_rows))]

    def rows(self, groups: list[tuple[int, int]] | None = None, check: bool = True) -> Iterator[Row]:
        """The rows of `groups` (default: all), in order, checked unless `check` is False."""
        for s, g in self.groups() if groups is None else groups:
            shard = self.shards[s]
            first = shard.starts[g]
            with pq.ParquetFile(shard.path) as f:
                for batch in f.iter_batches(batch_size=BATCH_ROWS, row_groups=[g],
                                            columns=shard.columns):
                    data = _pylist(batch)
                    for i in range(batch.num_rows):
                        row = self._row(s, data, i, first + i)
                        yield self.check(row) if check else row
                    first += batch.num_rows

    def locate(self, shard: int, row: int) -> tuple[int, int]:
        """(row group, its first row) of a file's row."""
        starts = self.shards[shard].starts
        group = bisect.bisect_right(starts, row) - 1
        return group, starts[group]

    def spread(self, n: int) -> list[tuple[int, int]]:
        """About n (shard, row) positions spread evenly over all rows, in order."""
        total = self.total_rows
        wanted = sorted({k * total // n for k in range(n)}) if total and n > 0 else []
        ends = [0]
        for shard in self.shards:
            ends.append(ends[-1] + shard.rows)
        out = []
        for index in wanted:
            s = bisect.bisect_right(ends, index) - 1
            out.append((s, index - ends[s]))
        return out

    def _row(self, s: int, data: dict[str, list], i: int, row: int) -> Row:
        shard = self.shards[s]
        m, where = shard.mapping, f"{shard.label} row {row}"
        images, problems = {}, []
        for role in IMAGE_ROLES:
            try:
                images[role] = cell_image(data[m[role]][i], m[role], where, shard.files,
                                          shard.path.name).read()
            except LookupError as exc:
                problems.append(str(exc))
            except (OSError, ValueError) as exc:
                problems.append(f"{m[role]}: cannot be read ({exc})")
        prompt = data[m["prompt"]][i]
        ident = data[m["id"]][i] if "id" in m else None
        return Row(s, row, where, "" if prompt is None else str(prompt),
                   row_sample_id(shard.path, row, ident), images, problems)

    def check(self, row: Row) -> Row:
        """Decode its images and judge the pair by the store's rules (row.problems, issues)."""
        m = self.shards[row.shard].mapping
        for role, data in row.images.items():
            try:
                row.sizes[role] = decoded_size(data, m[role])
            except BadImage as exc:
                row.problems.append(str(exc))
        pair = {"instruction": row.prompt}
        if len(row.sizes) == len(IMAGE_ROLES):
            for role in IMAGE_ROLES:
                (w, h), data = row.sizes[role], row.images[role]
                pair.update({f"{role}_width": w, f"{role}_height": h,
                             f"{role}_hash": hashlib.sha256(data).hexdigest()})
        row.issues = pair_issues(pair, self.max_pixels)
        row.problems += [i["message"] for i in row.issues if i["level"] == "error"]
        return row


class RowReader:
    """Single rows by (shard, row), unchecked, for the encoder. It reads forward through a
    row group one batch at a time, so rows asked for in file order cost one pass with one
    batch in memory; asking for an earlier row restarts its group."""

    def __init__(self, source: ParquetSource):
        self.source = source
        self._at: tuple[int, int] | None = None  # (shard, group) being read
        self._file = self._batches = None
        self._start, self._data, self._count = 0, {}, 0

    def row(self, shard: int, row: int) -> Row:
        group, start = self.source.locate(shard, row)
        if self._at != (shard, group) or row < self._start:
            self._open(shard, group, start)
        while row >= self._start + self._count:
            self._start += self._count
            batch = next(self._batches)  # the row is in this group: a batch is left
            self._data, self._count = _pylist(batch), batch.num_rows
        return self.source._row(shard, self._data, row - self._start, row)

    def _open(self, shard: int, group: int, start: int) -> None:
        self.close()
        info = self.source.shards[shard]
        self._file = pq.ParquetFile(info.path)
        self._batches = self._file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group],
                                                columns=info.columns)
        self._at, self._start, self._data, self._count = (shard, group), start, {}, 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._batches = self._at = None


def _pylist(batch: pa.RecordBatch) -> dict[str, list]:
    return {name: batch.column(name).to_pylist() for name in batch.schema.names}


def _shard(path: Path, label: str, explicit: dict[str, str], flag: str) -> Shard:
    try:
        with pq.ParquetFile(path) as f:
            meta, schema = f.metadata, f.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable parquet file ({exc})") from None
    try:
        layout, mapping = choose_columns(schema, explicit, flag)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None
    return Shard(path, label, layout, mapping,
                 [meta.row_group(g).num_rows for g in range(meta.num_row_groups)],
                 FolderFiles(path.parent, names=[path.name], local_paths=True))
