"""Benchmark: what a training launch costs, from JobManager.submit to the trainer's first step.

    .venv/bin/python bench/launch_overhead.py [--pairs 5000] [--large 100000] [--subset K]

On the demo model (CPU), 64x64 PNG pairs (bench/launch_pairs.py: every image its own file),
max_pixels 4096, no edit-image resize, 2 steps. Prints JSON lines:

- launch_first_step_s: submit() until the run's first line in metrics.jsonl, for run 1
  (encodes every pair into the project's encode cache) and run 2 with the same settings
  (finds them all there). Goals: run 2 <= 10 % of run 1; its submit <= 5 s.
  Where encoding every pair is too slow, --subset K measures run 1 and run 2 on K pairs
  (the encode time per pair), and run 2 for real on a project left as its run 1 would
  leave it: pairs checked at this max_pixels, and an encode-cache entry for every pair, a
  real encoding of the subset (pairs i and i + 64 have the same pixels and prompt, so the
  same tensors) under the key the trainer gives the pair. Run 1 is then run 2 plus N
  encodes: an estimate, named so.
- launch_submit_s: submit() until it returns with the supervisor started (stored checks,
  dataset export with hard links, run record, accelerate config, memory plan, process).
- run_extra_disk_mb: what a run adds to the disk beyond its output/: the project folder's
  usage, each inode once (a hard link costs a directory entry), after the run minus
  before, the project-wide encode cache left out. Goal ~0.
- launch_submit_s at --large pairs (rows written with the store's batch insert): the first
  launch (every pair checked at this max_pixels for the first time) and a second; each run
  is deleted right after it starts. Goal <= 10 s.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from launch_pairs import POOL, bulk_project, import_project  # noqa: E402

from studio.dataset.export import export_dataset  # noqa: E402
from studio.dataset.validate import check_for_launch  # noqa: E402
from studio.jobs import run_folder  # noqa: E402
from studio.jobs.launch import TrainOptions  # noqa: E402
from studio.jobs.presets import DEMO, preset_options  # noqa: E402
from studio.jobs.manager import JobManager  # noqa: E402
from studio.store import Store  # noqa: E402
from studio.trainer import run_files  # noqa: E402
from studio.trainer.cache import EncodedCache, model_fingerprint  # noqa: E402
from studio.trainer.data import load_pairs  # noqa: E402

PIXELS = 4096
ENCODING = re.compile(r"encoding \d+ of \d+ pairs \(\d+ cached\)|all \d+ pairs found in the cache")


def options(model: Path, steps: int) -> TrainOptions:
    return preset_options(DEMO, model=str(model), max_pixels=PIXELS,
                          edit_image_auto_resize=False, max_steps=steps, save_steps=None,
                          sample_steps=0)


def disk_bytes(folder: Path) -> int:
    """Blocks in use under `folder`, each inode once, leaving out runs' output/ folders and
    the encode cache."""
    seen, total = set(), 0
    for top, dirs, files in os.walk(folder):
        if Path(top).parent.name == "runs":
            dirs[:] = [d for d in dirs if d != run_folder.OUTPUT]
        if Path(top) == folder:
            dirs[:] = [d for d in dirs if d != run_folder.ENCODE_CACHE]
        for name in [*files, *dirs]:
            st = os.lstat(os.path.join(top, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def first_step(jobs: JobManager, project: str, opts: TrainOptions, timeout: float) -> dict:
    """One run: submit, wait for its first metrics line, then for its end."""
    started = time.perf_counter()
    run = jobs.submit(project, opts)
    submitted = time.perf_counter() - started
    metrics = run_folder.output(Path(run["run_dir"])) / run_files.METRICS
    while not (metrics.is_file() and metrics.stat().st_size):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"no training step after {timeout}s; see {run['run_dir']}/train.log")
        if jobs.reconcile_one(jobs.runs.require(run["id"]))["status"] == "failed":
            raise SystemExit(jobs.runs.require(run["id"])["error"])
        time.sleep(0.1)
    stepped = time.perf_counter() - started
    done = jobs.wait(run["id"], timeout=timeout)
    log = (Path(run["run_dir"]) / run_folder.LOG).read_text(errors="replace")
    encoded = ENCODING.findall(log)  # the trainer's own account of what it encoded
    return {"run": run["id"], "submit_s": round(submitted, 2), "first_step_s": round(stepped, 2),
            "status": done["status"], "encoding": encoded[-1] if encoded else "?"}


def fill_cache(store: Store, encoded: str, project: str, model: Path, scratch: Path) -> int:
    """Give every pair of `project` the entry its twin in `encoded` (same pixels and prompt)
    has, under the key the trainer gives it; hard links, so the disk holds each once."""
    fingerprint = model_fingerprint(model)
    source = store.project_dir(encoded) / run_folder.ENCODE_CACHE / fingerprint
    (cache,) = EncodedCache.recorded(source)  # the settings the subset's runs keyed with
    export_dataset(store, encoded, scratch / "encoded", link=True)
    by_prompt = {pair.prompt: cache.path(cache.key(pair)) for pair in load_pairs(scratch / "encoded")}
    export_dataset(store, project, scratch / "project", link=True)
    root = store.project_dir(project) / run_folder.ENCODE_CACHE / fingerprint
    filled = 0
    for pair in load_pairs(scratch / "project"):
        entry = root / cache.path(cache.key(pair)).relative_to(source)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if not entry.exists():
            os.link(by_prompt[pair.prompt], entry)
            filled += 1
    shutil.rmtree(scratch)
    return filled


def small(work: Path, model: Path, n: int, subset: int, steps: int, timeout: float) -> None:
    """Run 1 and run 2 of the same settings on `n` pairs; with `subset`, run 1 on that many
    (see the module's docstring)."""
    if subset and subset < min(n, POOL):
        raise SystemExit(f"--subset must hold every pixels-and-prompt combination: >= {POOL}")
    store = Store(work / "projects")
    started = time.perf_counter()
    import_project(store, "p", n, max_pixels=PIXELS)
    made = time.perf_counter() - started
    jobs = JobManager(store)
    opts = options(model, steps)
    project = store.project_dir("p")
    out = {"bench": "launch_first_step_s", "pairs": n, "unit": "s"}
    if subset:
        import_project(store, "subset", subset, max_pixels=PIXELS)
        one = first_step(jobs, "subset", opts, timeout)  # encodes every pair
        again = first_step(jobs, "subset", opts, timeout)  # finds them all in the cache
        per_pair = (one["first_step_s"] - again["first_step_s"]) / subset
        # "p" as its first run would leave it: pairs checked at this max_pixels, cache full.
        check_for_launch(store, "p", PIXELS)
        out["cache_entries_filled"] = fill_cache(store, "subset", "p", model, work / "scratch")
        out["subset"] = {"pairs": subset, "first_run": one, "second_run": again,
                         "encode_s_per_pair": round(per_pair, 3)}
    else:
        one = first_step(jobs, "p", opts, timeout)
    before = disk_bytes(project)
    two = first_step(jobs, "p", opts, timeout)
    after = disk_bytes(project)
    first = two["first_step_s"] + n * per_pair if subset else one["first_step_s"]
    out.update(value=two["first_step_s"], second_run=two,
               **({"first_run_estimate_s": round(first, 1)} if subset else {"first_run": one}),
               second_over_first=round(two["first_step_s"] / first, 4),
               goal="second <= 10 % of first; submit <= 5 s", import_s=round(made, 1),
               device="cpu", model="demo", max_pixels=PIXELS)
    print(json.dumps(out))
    apparent = sum(f.stat().st_size for f in
                   run_folder.dataset(jobs.run_dir("p", two["run"])).rglob("*") if f.is_file())
    print(json.dumps({"bench": "run_extra_disk_mb", "pairs": n,
                      "value": round((after - before) / 2**20, 2), "unit": "MB",
                      "dataset_apparent_mb": round(apparent / 2**20, 2), "goal": "~0"}))
    store.close()


def large(work: Path, model: Path, n: int) -> None:
    store = Store(work / "large")
    started = time.perf_counter()
    bulk_project(store, "big", n, max_pixels=PIXELS)
    made = time.perf_counter() - started
    jobs = JobManager(store)
    opts = options(model, 2)
    runs = []
    for _ in range(2):
        started = time.perf_counter()
        run = jobs.submit("big", opts)
        runs.append(round(time.perf_counter() - started, 2))
        assert run["status"] == "running", run
        jobs.delete(run["id"])  # stopped right after it started
    # The parts, on the state the second launch found.
    started = time.perf_counter()
    check = check_for_launch(store, "big", PIXELS)
    checked = time.perf_counter() - started
    started = time.perf_counter()
    exported = export_dataset(store, "big", work / "export", link=True)
    export_s = time.perf_counter() - started
    shutil.rmtree(work / "export")
    print(json.dumps({"bench": "launch_submit_s", "pairs": n, "value": runs[1], "unit": "s",
                      "first_run_s": runs[0], "second_run_s": runs[1],
                      "stored_check_s": round(checked, 2), "rechecked": check.rechecked,
                      "export_links_s": round(export_s, 2), "linked": exported.linked,
                      "goal": "<= 10", "bulk_insert_s": round(made, 1)}))
    store.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5000)
    p.add_argument("--subset", type=int, default=0,
                   help="where encoding all pairs takes too long: the first run on this many "
                        "pairs, and its figure for --pairs estimated (>= 64)")
    p.add_argument("--large", type=int, default=100000, help="0: skip")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--timeout", type=float, default=3600)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    try:
        from studio.engine.demo_model import build_demo_model

        model = build_demo_model(work / "demo")
        if a.pairs:
            small(work, model, a.pairs, a.subset, a.steps, a.timeout)
        if a.large:
            large(work, model, a.large)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
