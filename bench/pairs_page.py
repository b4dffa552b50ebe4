"""pairs_page_ms: one page of 50 pairs from a 100,000-pair project (goal <= 200 ms).

Rows are inserted directly in bulk (no images: paging never reads image files). Timed
through the pair store's own page() and count(), as the Dataset tab and `dataset list` call
them: the first page, a middle page, the last page, and a search by instruction. Each is
the median of 5 runs on a freshly opened store.

    python bench/pairs_page.py [--pairs 100000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from studio.dataset.ingest import pair_key  # noqa: E402
from studio.store import Store, now  # noqa: E402

PAGE = 50
WORDS = ["sky", "cat", "red", "sunset", "snow", "hat", "river", "glasses", "night", "lamp"]


def fill(store: Store, project: str, count: int) -> None:
    pid = store.require_project(project)["id"]
    stamp = now()
    rows = ((pid, f"s{i:06d}", f"images/{i:064x}.jpg", f"images/{i + count:064x}.jpg",
             f"make the {WORDS[i % 10]} {WORDS[(i // 10) % 10]} number {i}", "[]", "train", stamp,
             f"{i:064x}", f"{i + count:064x}", pair_key(str(i), [], str(i + count), ""),
             512, 512, 512, 512, "[]", "{}", stamp, "ok") for i in range(count))
    with store.db.atomic():
        store.db.conn.executemany(
            "INSERT INTO pairs (project_id, sample_id, source_path, target_path, instruction, "
            "extra_sources, split, created_at, source_hash, target_hash, pair_key, source_width, "
            "source_height, target_width, target_height, issues, meta, updated_at, status) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def timed_ms(fn) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        store.create_project("other")
        store.create_project("big")
        started = time.perf_counter()
        fill(store, "other", 1000)  # another project's rows must not slow this one down
        fill(store, "big", args.pairs)
        built = round(time.perf_counter() - started, 1)
        store.close()
        store = Store(Path(tmp))
        pairs, last = store.pairs, (args.pairs - 1) // PAGE
        cases = {
            "first": lambda: (pairs.page("big", 0, PAGE), pairs.count("big")),
            "middle": lambda: (pairs.page("big", last // 2, PAGE), pairs.count("big")),
            "last": lambda: (pairs.page("big", last, PAGE), pairs.count("big")),
            "search": lambda: (pairs.page("big", 0, PAGE, search="sunset hat"),
                               pairs.count("big", search="sunset hat")),
        }
        assert len(cases["last"]()[0]) == args.pairs - last * PAGE
        results = {name: timed_ms(fn) for name, fn in cases.items()}
        print(json.dumps({"bench": "pairs_page_ms", "value": max(results.values()), "unit": "ms",
                          "goal": "<= 200", "pairs": args.pairs, "page_size": PAGE,
                          "cases_ms": results, "build_s": built,
                          "note": "page + count; worst of first/middle/last page and a search"}),
              flush=True)


if __name__ == "__main__":
    main()
