"""Benchmark: the trainer's parquet reader on a dataset read in place (--dataset_parquet).

    .venv/bin/python bench/parquet_in_place.py [--rows 10000] [--size 64] [--row_group 500] [--shards 2]

Builds UltraEdit-style shards (PNG bytes of size x size noise, which barely compresses, so
the files are as big as the images), then, in a fresh process, runs what the trainer does with
them before any model work: the scan (every row read one batch of its row group at a time, both
images decoded and checked, each pair's encode-cache key hashed; studio/trainer/parquet_pairs.py)
and then the encoder's reads (every pair made from its row, in order). Reports rows per second
for each and that process's peak RSS (VmHWM: imports included, and above what it held before
the scan). Prints JSON lines.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak). Not ru_maxrss: Linux carries the parent's peak across
    fork and exec into a child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def build(folder: Path, rows: int, size: int, row_group: int, shards: int) -> float:
    """Writes the shards one row group at a time; returns their size in MB."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

    def png(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        return buffer.getvalue()

    folder.mkdir(parents=True)
    per_shard = -(-rows // shards)
    for s in range(shards):
        numbers = range(s * per_shard, min(rows, (s + 1) * per_shard))
        writer = None
        for start in range(numbers.start, numbers.stop, row_group):
            n = range(start, min(numbers.stop, start + row_group))
            table = pa.table({
                "idx": pa.array(list(n), pa.int64()),
                "edit_prompt": [f"make the sky blue, {i}" for i in n],
                "source_image": pa.array([{"bytes": png(2 * i), "path": None} for i in n], image),
                "edited_image": pa.array([{"bytes": png(2 * i + 1), "path": None} for i in n], image),
            })
            writer = writer or pq.ParquetWriter(folder / f"train-{s:05d}.parquet", table.schema)
            writer.write_table(table)
        writer.close()
    return sum(p.stat().st_size for p in folder.glob("*.parquet")) / 2**20


def child(folder: Path) -> None:
    from studio.dataset.parquet_rows import ParquetSource
    from studio.trainer import parquet_pairs
    from studio.trainer.cache import EncodedCache

    cache = EncodedCache(folder.parent / "cache", "bench", {"max_pixels": 4096})
    before = status_mb("VmRSS")
    started = time.perf_counter()
    source = ParquetSource(folder, flag="--parquet_columns", max_pixels=4096)
    part = parquet_pairs.scan(source, source.groups(), cache.key)
    scan_s = time.perf_counter() - started
    pairs = parquet_pairs.ParquetPairs(source, part, cached=True)
    started = time.perf_counter()
    read_bytes = sum(len(p.target.read_bytes()) + len(p.inputs[0].read_bytes()) for p in pairs)
    read_s = time.perf_counter() - started
    print(json.dumps({"rows": part.scanned, "pairs": len(pairs), "groups": len(source.groups()),
                      "scan_s": scan_s, "read_s": read_s, "image_mb": read_bytes / 2**20,
                      "before_mb": before, "peak_mb": status_mb("VmHWM")}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--row_group", type=int, default=500)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(Path(a.child))
    work = Path(tempfile.mkdtemp(prefix="bench-parquet-"))
    try:
        started = time.perf_counter()
        file_mb = build(work / "shards", a.rows, a.size, a.row_group, a.shards)
        build_s = time.perf_counter() - started
        proc = subprocess.run([sys.executable, __file__, "--child", str(work / "shards")], cwd=ROOT,
                              capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                                                                   "PATH": "/usr/bin:/bin"})
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.splitlines()[-1])
        shape = {"rows": r["rows"], "size": f"{a.size}x{a.size}", "row_groups": r["groups"],
                 "files": a.shards, "parquet_mb": round(file_mb, 1)}
        print(json.dumps({"bench": "parquet_scan_rows_per_s", "value": round(r["rows"] / r["scan_s"]),
                          "unit": "rows/s", "scan_s": round(r["scan_s"], 2),
                          "what": "read, decode and check both images, hash the cache key",
                          **shape, "build_s": round(build_s, 1)}))
        print(json.dumps({"bench": "parquet_read_rows_per_s", "value": round(r["pairs"] / r["read_s"]),
                          "unit": "rows/s", "read_s": round(r["read_s"], 2),
                          "what": "the encoder's reads: every pair from its row, in order",
                          "image_mb": round(r["image_mb"], 1), **shape}))
        print(json.dumps({"bench": "parquet_host_ram_peak", "value": round(r["peak_mb"]), "unit": "MB",
                          "goal": "< 1024", "above_start_mb": round(r["peak_mb"] - r["before_mb"]),
                          "at_start_mb": round(r["before_mb"]), **shape}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
