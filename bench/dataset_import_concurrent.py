"""dataset_import_concurrent_*: folder imports into one project, alone and three at once.

Three folders of --rows distinct pairs each are generated in a temporary folder (the
512×512 JPEGs of bench/dataset_import.py, a .txt instruction per pair). First one
importer (studio.dataset.importers.import_folder, what `dataset import --pairs` runs)
imports one folder into a fresh project; then three importers, separate processes
released together, import the three folders into another fresh project. The two cases
alternate --repeats times and the best rate of each is kept, so that other work on the
machine skews them less. Errors count crashed importers, rejected rows and rows missing
from the store, over all runs. Goals: no errors, and the three together import at least
as many rows per second as one alone.

    PYTHONPATH=. python bench/dataset_import_concurrent.py [--rows 600] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataset_import import POOL, SIDE, base_jpegs, with_comment  # noqa: E402

from studio.dataset.importers import import_folder  # noqa: E402
from studio.store import Store  # noqa: E402

IMPORTERS = 3
SPAWN = multiprocessing.get_context("spawn")  # each importer its own interpreter and Store


def write_folder(folder: Path, tag: int, rows: int, sources: list[bytes], targets: list[bytes]) -> None:
    folder.mkdir(parents=True)
    for i in range(rows):
        name = f"{tag}_{i:05d}"
        (folder / f"source_{name}.jpg").write_bytes(with_comment(sources[i % POOL], f"s{name}"))
        (folder / f"edited_{name}.jpg").write_bytes(with_comment(targets[i % POOL], f"t{name}"))
        (folder / f"{name}.txt").write_text(f"make picture {name} warmer, keep the rest")


def importer(projects: str, folder: str, start, results) -> None:
    store = Store(projects)
    start.wait()
    began = time.time()
    try:
        report = import_folder(store, "bench", folder)
        results.put({"began": began, "ended": time.time(), "added": report.added,
                     "errors": len(report.errors)})
    except Exception as exc:  # noqa: BLE001  (counted as an error, printed below)
        results.put({"began": began, "ended": time.time(), "added": 0, "errors": 1, "crash": repr(exc)})


def run_importers(projects: Path, folders: list[Path], rows: int) -> dict:
    """The folders imported at once, one process each; rows stored per second over the
    whole span (a crashed importer's committed batches count, its report is lost)."""
    Store(projects).create_project("bench")
    start, results = SPAWN.Barrier(len(folders)), SPAWN.Queue()
    processes = [SPAWN.Process(target=importer, args=(str(projects), str(f), start, results))
                 for f in folders]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    seconds = max(o["ended"] for o in outcomes) - min(o["began"] for o in outcomes)
    stored = Store(projects).pairs.count("bench")
    added = sum(o["added"] for o in outcomes)
    return {"seconds": seconds, "added": added, "stored": stored,
            "rows_per_s": round(stored / seconds, 1),
            "importer_rows_per_s": [round(o["added"] / (o["ended"] - o["began"]), 1) for o in outcomes],
            "errors": sum(o["errors"] for o in outcomes) + len(folders) * rows - stored,
            "crashes": [o["crash"] for o in outcomes if "crash" in o]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=600, help="pairs per importer's folder")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each case; the best is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        sources, targets = base_jpegs(1), base_jpegs(2)
        folders = [Path(tmp) / f"folder{k}" for k in range(IMPORTERS)]
        for k, folder in enumerate(folders):
            write_folder(folder, k, args.rows, sources, targets)
        # The load average says how much of the CPUs other work took (the figures are CPU-bound).
        common = {"rows_per_importer": args.rows, "image": f"{SIDE}x{SIDE} JPEG", "cpus": os.cpu_count(),
                  "load_avg": round(os.getloadavg()[0], 1),
                  "generate_s": round(time.perf_counter() - started, 1)}
        runs = {"one": [], "three": []}
        for repeat in range(args.repeats):
            for case, used in (("one", folders[:1]), ("three", folders)):
                runs[case].append(run_importers(Path(tmp) / f"{case}{repeat}", used, args.rows))
    errors = sum(r["errors"] for case in runs.values() for r in case)
    crashes = [c for case in runs.values() for r in case for c in r["crashes"]]
    one, three = (max(runs[case], key=lambda r: r["rows_per_s"]) for case in ("one", "three"))
    print(json.dumps({"bench": "dataset_import_concurrent_1_rows_per_s", "value": one["rows_per_s"],
                      "unit": "rows/s", "goal": "baseline for 3 importers",
                      "seconds": round(one["seconds"], 1), "added": one["added"], **common}), flush=True)
    print(json.dumps({"bench": "dataset_import_concurrent_3_rows_per_s", "value": three["rows_per_s"],
                      "unit": "rows/s", "goal": f">= {one['rows_per_s']} (1 importer)",
                      "seconds": round(three["seconds"], 1), "added": three["added"],
                      "importer_rows_per_s": three["importer_rows_per_s"], **common}), flush=True)
    print(json.dumps({"bench": "dataset_import_concurrent_errors", "value": errors,
                      "unit": "errors", "goal": "0", "crashes": crashes, "repeats": args.repeats,
                      "note": "crashed importers + rejected rows + rows missing from the store",
                      **common}), flush=True)


if __name__ == "__main__":
    main()
