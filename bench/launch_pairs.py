"""Large projects for the launch benches: N pairs, every image its own file on disk, made fast.

Images are 64x64 PNGs: a pool of POOL pictures of random 8x8 blocks, each made distinct per
use by a tEXt chunk (other bytes, other hash, the same pixels), so no pair shares a file or
is a duplicate.
Pair i shows pool pictures (i mod POOL, 7i+1 mod POOL) with an instruction naming just those,
so pairs i and i + POOL have the same pixels and prompt: the same encodings, other files.
`import_project` goes through the normal import (studio.dataset.ingest: decode, hash, store
each image); `bulk_project` writes the same files with the store's own image writer
(store_image) and the rows with its batch insert (Pairs.add, what ingest uses), each row
checked as ingest checks one (pair_issues): 100,000 pairs in about a minute.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
from PIL import Image

from studio.dataset.checks import DEFAULT_MAX_PIXELS, pair_issues
from studio.dataset.images import PreparedImage, store_image
from studio.dataset.ingest import ingest, pair_key
from studio.dataset.report import ImportReport
from studio.dataset.sources import Candidate, bytes_ref
from studio.store import Store
from studio.store.pairs import status_of

SIDE = 64
POOL = 64
BATCH = 5000


def pool(seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(POOL):
        buffer = io.BytesIO()
        blocks = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        blocks.resize((SIDE, SIDE), Image.NEAREST).save(buffer, "PNG")  # ~0.3 KB, not 12
        out.append(buffer.getvalue())
    return out


def variant(png: bytes, text: str) -> bytes:
    """The same PNG with a tEXt chunk before IEND (the last 12 bytes): distinct bytes."""
    data = b"Comment\0" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]


def _images(n: int, seed: int = 0):
    """(source bytes, target bytes, instruction, sample id) of pair i, for i < n."""
    base = pool(seed)
    for i in range(n):
        yield (variant(base[i % POOL], f"source {i}"), variant(base[(i * 7 + 1) % POOL], f"target {i}"),
               f"turn picture {i % POOL} into picture {(i * 7 + 1) % POOL}", f"pair_{i:06d}")


def import_project(store: Store, project: str, n: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """`n` pairs through the normal import; returns how many the project holds."""
    store.create_project(project)
    candidates = (Candidate(row=sid, sample_id=sid, source=bytes_ref(f"{sid} source", s),
                            target=bytes_ref(f"{sid} target", t), instruction=text)
                  for s, t, text, sid in _images(n))
    ingest(store, project, candidates, ImportReport(), total=n, max_pixels=max_pixels)
    return store.pairs.count(project)


def bulk_project(store: Store, project: str, n: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """`n` pairs written with the store's image writer and batch insert."""
    store.create_project(project)
    folder = store.project_dir(project)
    rows = []
    for s, t, text, sid in _images(n):
        source, target = (PreparedImage(hashlib.sha256(b).hexdigest(), "png", b, SIDE, SIDE)
                          for b in (s, t))
        row = {"sample_id": sid, "source_path": store_image(folder, source),
               "target_path": store_image(folder, target), "extra_sources": [],
               "instruction": text, "split": "train", "source_hash": source.hash,
               "target_hash": target.hash, "pair_key": pair_key(source.hash, [], target.hash, text),
               "source_width": SIDE, "source_height": SIDE, "target_width": SIDE,
               "target_height": SIDE, "meta": {}}
        row["issues"] = pair_issues(row, max_pixels)
        row["status"] = status_of(row["issues"])
        rows.append(row)
        if len(rows) >= BATCH:
            store.pairs.add(project, rows)
            rows = []
    if rows:
        store.pairs.add(project, rows)
    return store.pairs.count(project)
