"""dataset_import_rows_per_s and dataset_import_peak_rss_mb: a 10,000-row UltraEdit-style parquet.

The file is generated in a temporary folder: 512×512 JPEGs (UltraEdit's size) stored as
{bytes, path} structs, edit_prompt, idx and score columns, 500 rows per row group. Every
image is distinct (a per-row JPEG comment), so nothing is deduplicated away. The import
(studio.dataset.importers.import_parquet, what `dataset import --parquet` runs) runs in a
child process, whose peak RSS is read from ru_maxrss. Goals: >= 167 rows/s, < 1024 MB.

    python bench/dataset_import.py [--rows 10000]
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDE = 512
POOL = 64
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def base_jpegs(seed: int) -> list[bytes]:
    """A pool of photo-like JPEGs: smooth gradients plus noise, ~40-60 KB each at quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    out = []
    for _ in range(POOL):
        a, b, c = rng.uniform(0, 255, 3)
        rgb = np.stack([a * x + (255 - a) * y, b * (1 - x) * y + 60, c * x * (1 - y) + 40], -1)
        rgb += rng.normal(0, 12, rgb.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture with a COM segment: distinct bytes and hash, same decoding cost."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def write_parquet(path: Path, rows: int) -> None:
    sources, targets = base_jpegs(1), base_jpegs(2)
    writer = None
    for start in range(0, rows, 500):
        n = range(start, min(rows, start + 500))
        table = pa.table({
            "clip_sim_source": pa.array([0.2 + (i % 50) / 100 for i in n], pa.float64()),
            "clip_sim_target": pa.array([0.25 + (i % 40) / 100 for i in n], pa.float64()),
            "clip_sim_dir": pa.array([0.1 + (i % 30) / 100 for i in n], pa.float64()),
            "clip_sim_image": pa.array([0.7 + (i % 20) / 100 for i in n], pa.float64()),
            "dinov2_sim": pa.array([0.6 + (i % 25) / 100 for i in n], pa.float64()),
            "ssim": pa.array([0.5 + (i % 40) / 100 for i in n], pa.float64()),
            "source_caption": [f"a picture number {i}" for i in n],
            "target_caption": [f"a changed picture number {i}" for i in n],
            "idx": pa.array(list(n), pa.int64()),
            "edit_prompt": [f"make picture {i} warmer, add a red \"sign\", keep the rest" for i in n],
            "source_image": pa.array([{"bytes": with_comment(sources[i % POOL], f"s{i}"), "path": None} for i in n], IMAGE),
            "edited_image": pa.array([{"bytes": with_comment(targets[i % POOL], f"t{i}"), "path": None} for i in n], IMAGE),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def child(parquet: str, projects: str, queue) -> None:
    from studio.dataset.importers import import_parquet
    from studio.store import Store

    store = Store(projects)
    store.create_project("bench")
    started = time.perf_counter()
    report = import_parquet(store, "bench", parquet)
    seconds = time.perf_counter() - started
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": seconds, "added": report.added, "errors": len(report.errors), "rss_kb": rss_kb})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "ultraedit.parquet"
        started = time.perf_counter()
        write_parquet(parquet, args.rows)
        generated = time.perf_counter() - started
        size_mb = parquet.stat().st_size / 2**20
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: its RSS is the import's
        queue = context.Queue()
        process = context.Process(target=child, args=(str(parquet), str(Path(tmp) / "projects"), queue))
        process.start()
        result = queue.get()
        process.join()
        common = {"rows": args.rows, "parquet_mb": round(size_mb, 1), "image": f"{SIDE}x{SIDE} JPEG",
                  "cpus": os.cpu_count(), "added": result["added"], "errors": result["errors"],
                  "generate_s": round(generated, 1)}
        print(json.dumps({"bench": "dataset_import_rows_per_s",
                          "value": round(result["added"] / result["seconds"], 1), "unit": "rows/s",
                          "goal": ">= 167", "seconds": round(result["seconds"], 1), **common}), flush=True)
        print(json.dumps({"bench": "dataset_import_peak_rss_mb",
                          "value": round(result["rss_kb"] / 1024, 1), "unit": "MB",
                          "goal": "< 1024", **common}), flush=True)


if __name__ == "__main__":
    main()
