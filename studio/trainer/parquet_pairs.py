"""Training pairs read in place from parquet shards (--dataset_parquet), for datasets too
big to import.

Every row that can train is a pair, in file order (files sorted by path, then rows), so the
DataOrder over them is the same in every run and --resume continues exactly. Finding them
reads and checks every row (studio/dataset/parquet_rows.py): a bad row is skipped, counted
and named in the log. That scan is shared by the processes as the encoding is: each scans
its share of the row groups into a part file beside the encode cache, then every process
reads all the parts. A later run on the same files (paths, sizes, times), columns and cache
settings reads the parts instead of scanning again; so does a resume.

No image stays in memory: a pair is made from its row when it is asked for (to encode it),
and only each pair's position and cache key are kept (about 150 bytes a pair).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from studio.dataset.parquet_rows import ParquetSource, Row, RowReader

from . import dist
from .data import DatasetError, Pair
from .run_files import replacing

log = logging.getLogger("studio.trainer")
SCAN_VERSION = 1
SCANS = "parquet_scans"  # beside the encodings in the cache folder
NAMED_SKIPS = 100        # skipped rows named one by one in the log; the rest are counted


@dataclass(frozen=True)
class CellImage:
    """One image cell's bytes, for as long as its pair is being encoded."""
    name: str
    data: bytes = field(repr=False)

    def read_bytes(self) -> bytes:
        return self.data

    def __str__(self) -> str:
        return self.name


def pair_of(row: Row) -> Pair:
    return Pair(CellImage(f"{row.where} target", row.images["target"]),
                (CellImage(f"{row.where} source", row.images["source"]),),
                row.prompt, row.sample_id)


@dataclass
class ScanPart:
    located: np.ndarray                  # (n, 2) int64: (shard, row) of each pair
    keys: list[str]                      # each pair's encode-cache key ([] without a cache)
    skipped: list[tuple[int, int, str, str]] = field(default_factory=list)  # shard, row, where, why
    scanned: int = 0


def scan(source: ParquetSource, groups: list[tuple[int, int]],
         key: Callable[[Pair], str] | None) -> ScanPart:
    """Read and check the rows of `groups`; `key` (the cache's) keys each good row while
    its bytes are at hand, so they are never read twice for that."""
    located, keys, skipped, scanned = [], [], [], 0
    for row in source.rows(groups):
        scanned += 1
        if row.problems:
            skipped.append((row.shard, row.row, row.where, row.problem))
            continue
        located.append((row.shard, row.row))
        if key:
            keys.append(key(pair_of(row)))
    return ScanPart(np.array(located, dtype=np.int64).reshape(-1, 2), keys, skipped, scanned)


def merge(parts: list[ScanPart]) -> ScanPart:
    """The parts of several processes as one scan, in row order."""
    located = np.concatenate([p.located for p in parts])
    keys = [k for p in parts for k in p.keys]
    order = np.lexsort((located[:, 1], located[:, 0]))
    return ScanPart(located[order], [keys[i] for i in order] if keys else [],
                    sorted(s for p in parts for s in p.skipped), sum(p.scanned for p in parts))


def write_part(path: Path, part: ScanPart) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"skipped": part.skipped, "scanned": part.scanned})
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a reader never sees half a part
        np.savez(f, located=part.located, keys=np.array(part.keys, dtype="S64"), meta=np.array(meta))


def read_part(path: Path) -> ScanPart:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return ScanPart(z["located"].reshape(-1, 2), [k.decode() for k in z["keys"].tolist()],
                        [tuple(s) for s in meta["skipped"]], meta["scanned"])


def part_name(rank: int, world: int) -> str:
    return f"part-{rank}-of-{world}.npz"


def complete_world(folder: Path) -> int | None:
    """The process count of a complete set of parts in `folder`, if there is one."""
    for path in sorted(folder.glob("part-0-of-*.npz")):
        world = int(path.stem.rsplit("-", 1)[1])
        if all((folder / part_name(r, world)).is_file() for r in range(world)):
            return world
    return None


def fingerprint(source: ParquetSource, settings: str) -> str:
    """What decides a scan: the files as they are, their columns, the checks' max_pixels,
    and the cache settings that the keys hash."""
    shards = [[str(s.path), s.path.stat().st_size, s.path.stat().st_mtime_ns, s.mapping]
              for s in source.shards]
    text = json.dumps({"version": SCAN_VERSION, "settings": settings, "shards": shards,
                       "max_pixels": source.max_pixels}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class ParquetPairs(Sequence):
    """The pairs of a scan; pairs[i] reads row i's cells (a batch of its row group)."""

    def __init__(self, source: ParquetSource, part: ScanPart, cached: bool):
        self.source, self.part = source, part
        self.keys = part.keys if cached else None
        self.reader = RowReader(source)

    def __len__(self) -> int:
        return len(self.part.located)

    def __getitem__(self, i: int) -> Pair:
        shard, row = (int(v) for v in self.part.located[i])
        found = self.reader.row(shard, row)
        if found.problems:
            raise DatasetError(f"{found.where} changed since it was scanned: {found.problem}")
        return pair_of(found)


def load(spec: str, columns: str | None, max_pixels: int, cache=None) -> ParquetPairs:
    """The pairs of `spec` (file, folder or glob). With `cache` (an EncodedCache), the scan
    is shared by the processes and kept beside the cache; without, each process scans alone."""
    source = ParquetSource(spec, columns, flag="--parquet_columns", max_pixels=max_pixels)
    groups = source.groups()
    if dist.is_main():
        log.info("parquet: %d rows in %d file(s), %s layout, columns %s", source.total_rows,
                 len(source.shards), "/".join(source.layouts),
                 ", ".join(f"{r}={c}" for r, c in source.shards[0].mapping.items()))
    if cache is None:
        part = _timed(source, groups, None)
    else:
        folder = cache.root / SCANS / fingerprint(source, cache.settings)
        world = complete_world(folder)
        if dist.any_true(world is None):
            world, rank = dist.world(), dist.rank()
            write_part(folder / part_name(rank, world), _timed(source, groups[rank::world], cache.key))
            dist.barrier()
        elif dist.is_main():
            log.info("parquet: rows scanned before, read from %s", folder)
        part = merge([read_part(folder / part_name(r, world)) for r in range(world)])
    _report(part)
    if not len(part.located):
        raise DatasetError(f"{spec}: none of its {part.scanned} rows can train"
                           + (f" (first: {part.skipped[0][2]}: {part.skipped[0][3]})" if part.skipped else ""))
    return ParquetPairs(source, part, cached=cache is not None)


def _timed(source: ParquetSource, groups, key) -> ScanPart:
    started = time.perf_counter()
    part = scan(source, groups, key)
    seconds = time.perf_counter() - started
    log.info("rank %d scanned %d rows of %d row group(s) in %.1fs (%.0f rows/s)", dist.rank(),
             part.scanned, len(groups), seconds, part.scanned / max(seconds, 1e-9))
    return part


def _report(part: ScanPart) -> None:
    if not dist.is_main():
        return
    log.info("parquet: %d pairs, %d of %d rows skipped", len(part.located), len(part.skipped),
             part.scanned)
    for _, _, where, why in part.skipped[:NAMED_SKIPS]:
        log.warning("skipped %s: %s", where, why)
    if len(part.skipped) > NAMED_SKIPS:
        log.warning("… and %d more skipped rows", len(part.skipped) - NAMED_SKIPS)
