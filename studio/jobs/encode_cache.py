"""The project's encode cache, <project>/encode_cache/<model fingerprint>/, shared by all its
runs: how many of its pairs are encoded for a model and settings, encoding them before any
run (the trainer with --encode_only), pruning the entries no pair uses, clearing it.

Counting and pruning key the pairs as a run does (studio/trainer/cache.py), which reads
every image: they run when asked, never on a page refresh. The settings a run used are
recorded in the cache itself, so entries of settings no longer in use are still known.

A pre-encode starts under the supervisor as a run does (launchers.py) and is followed through
the trainer's progress file (output/progress.json). It keeps its files in <project>/encode_job/,
laid out as a run's folder (dataset/, output/, train.log, exit.json; run_folder.py) plus
job.json, and replaced by the next one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from ..store import Store
from ..store.runs import ACTIVE
from ..trainer import process_group, run_files
from ..trainer.accelerate_config import write_config
from ..trainer.cache import CACHE_VERSION, EncodedCache, entry_files, keys_for, model_fingerprint
from ..trainer.data import Pair
from . import launch, launchers, monitor, planning, run_folder
from .launch import TrainOptions

JOB = "encode_job"
JOB_FILE = "job.json"


def cache_dir(store: Store, project: str) -> Path:
    return store.project_dir(project) / run_folder.ENCODE_CACHE


def job_dir(store: Store, project: str) -> Path:
    return store.project_dir(project) / JOB


# -- keying the project's pairs ----------------------------------------------------------

def stored_pair(store: Store, project: str, row: dict) -> Pair:
    """A stored pair as a run's dataset holds it, over the store's own files (a run's are
    hard links of them: the same bytes). A run's dataset is the seed export, which lists a
    pair's first source only (export.py), so only that one is keyed."""
    return Pair(store.pairs.path(project, row["target_path"]),
                (store.pairs.path(project, row["source_path"]),), row["instruction"],
                row["sample_id"])


def _pairs(store: Store, project: str, with_errors: bool = False) -> Iterator[Pair]:
    """The project's pairs; those with errors only if asked (the export leaves them out)."""
    for row in store.pairs.iterate(project):
        if with_errors or row["status"] != "error":
            yield stored_pair(store, project, row)


def encoding_options(model: str, preset: str, **fields) -> TrainOptions:
    """The options of a run of `preset` on `model`, `fields` on top: what the Dataset tab
    counts and pre-encodes with."""
    from .presets import preset_options

    return preset_options(preset, model=model, **fields)


def _expected_dtype(opts: TrainOptions) -> str:
    """The dtype a run with `opts` encodes in (the trainer's _dtype rule)."""
    from ..engine.devices import training_dtype

    return str(training_dtype(opts.device, opts.mixed_precision))


def matching(root: Path, opts: TrainOptions) -> list[EncodedCache]:
    """The recorded caches under a model's root that a run with `opts` would use."""
    wanted = {"version": CACHE_VERSION, "max_pixels": opts.max_pixels, "fixed": None,
              "dtype": _expected_dtype(opts), "edit_auto_resize": opts.edit_image_auto_resize}
    found = []
    for cache in EncodedCache.recorded(root):
        settings = cache.described()
        if (all(settings.get(k) == v for k, v in wanted.items())
                and bool(settings.get("fp8_text_encoder")) == opts.fp8_text_encoder):
            found.append(cache)
    return found


def _bytes(root: Path) -> int:
    return sum(entry.stat().st_size for entry in entry_files(root))


def status(store: Store, project: str, model: Path, opts: TrainOptions) -> dict:
    """{encoded, pairs, bytes}: how many of the pairs a run would train on (training and
    validation) are in the cache for this model and these settings, and the disk its
    model's entries take. Reads every pair's images."""
    root = cache_dir(store, project) / model_fingerprint(Path(model))
    caches = matching(root, opts)
    encoded = pairs = 0
    for pair in _pairs(store, project):
        pairs += 1
        try:
            keys = keys_for(caches, pair) if caches else []
        except OSError:  # a vanished image: not encodable, so not encoded
            continue
        encoded += any(cache.has(key) for cache, key in zip(caches, keys))
    return {"encoded": encoded, "pairs": pairs, "bytes": _bytes(root)}


def status_line(counted: dict, model: str) -> str:
    return (f"Encoded for {Path(model).name}: {counted['encoded']} of {counted['pairs']} pairs · "
            f"{counted['bytes'] / 2**20:.1f} MB")


# -- encoding ahead of a run -------------------------------------------------------------

def running(store: Store, project: str) -> bool:
    """Whether this project's pre-encode still runs (its process group lives)."""
    job = _read_job(job_dir(store, project))
    return bool(job) and process_group.alive(job.get("pid"))


def _read_job(folder: Path) -> dict | None:
    try:
        return json.loads((folder / JOB_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_job(folder: Path, job: dict) -> None:
    tmp = folder / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(job))
    os.replace(tmp, folder / JOB_FILE)


def encode_command(opts: TrainOptions, job: Path, cache: Path,
                   python: str = sys.executable) -> list[str]:
    """A run's launch of the trainer (launch.py: one rule for the encoding flags of both) on
    this node's devices, each process encoding its share, with --encode_only. No refusal by
    the memory plan, which is the training's: encoding never loads the transformer."""
    command = launch.launch_command(opts, run_folder.config(job), run_folder.dataset(job),
                                    run_folder.output(job), python=python, cache_dir=cache)
    return [*command, "--encode_only"]


def _encoding_options(opts: TrainOptions, model: Path) -> TrainOptions:
    """`opts` for a pre-encode: this node alone, no LoRA to start from, no memory refusal."""
    return dataclasses.replace(opts, model=str(model), num_machines=1, machine_rank=0,
                               launcher="manual", lora_checkpoint="", ignore_memory_plan=True)


def pre_encode(store: Store, project: str, opts: TrainOptions) -> subprocess.Popen:
    """Export the project's pairs (hard links) into its encode_job folder and start the
    trainer on them with --encode_only, under the supervisor as a run is (launchers.py);
    `progress` reads how it goes, `stop` ends it (what is encoded stays). The caller reaps
    the returned child (PreEncodes does for the app)."""
    store.require_project(project)
    if running(store, project):
        raise ValueError(f"project {project!r} is already being encoded")
    from ..dataset.export import export_dataset

    model = planning.model_folder(store, opts.model)
    model_fingerprint(model)  # first: fails on a folder that is no model
    opts = _encoding_options(opts, model)
    job = job_dir(store, project)
    shutil.rmtree(job, ignore_errors=True)  # the last job's dataset and files go
    exported = export_dataset(store, project, run_folder.dataset(job), link=True)
    write_config(run_folder.config(job), launch.accelerate_config(opts))
    total = exported.pairs + exported.validation_pairs
    if not total:
        raise ValueError(f"project {project!r} has no pairs to encode")
    state = {"model": str(model), "pairs": total, "started": time.time()}
    _write_job(job, state)
    child = None
    try:
        child = launchers.supervised(encode_command(opts, job, cache_dir(store, project)), job,
                                     launchers.environment(opts))
    finally:  # a pid of None: progress says it failed, rather than "starting" forever
        _write_job(job, {**state, "pid": child.pid if child else None})
    return child


def progress(store: Store, project: str) -> dict:
    """The last pre-encode: {state: none | running | finished | failed, pairs, to_encode,
    cached (None until the trainer has keyed the pairs), encoded, error}, from the
    trainer's progress file (run_files.PROGRESS) and the supervisor's exit file."""
    folder = job_dir(store, project)
    job = _read_job(folder)
    if job is None:
        return {"state": "none", "pairs": 0, "to_encode": None, "cached": None, "encoded": 0,
                "error": None}
    told = run_files.read_progress(run_folder.output(folder)) or {}
    keyed = told.get("phase") == "encode"
    alive = "pid" not in job or process_group.alive(job["pid"])  # no pid: being started
    code, _ = launchers.exit_status(folder)
    state = "running" if alive else "finished" if code == 0 else "failed"
    error = monitor.failure(folder, code) if state == "failed" else None
    return {"state": state, "pairs": job["pairs"], "to_encode": told["total"] if keyed else None,
            "cached": told["cached"] if keyed else None, "encoded": told["done"] if keyed else 0,
            "error": error}


def progress_line(done: dict) -> str:
    """The pre-encode's state in a line, for the Dataset tab."""
    if done["state"] == "none":
        return "No pre-encode yet."
    if done["state"] == "failed":
        return "Pre-encode failed: " + (done["error"] or "").split("\n", 1)[0]
    if done["to_encode"] is None:
        if done["state"] == "finished":  # ended before it keyed the pairs (stopped early)
            return f"Pre-encode ended before keying the {done['pairs']} pairs."
        return f"Pre-encoding: loading the encoders, keying {done['pairs']} pairs…"
    counts = (f"{done['encoded']} of {done['to_encode']} pairs encoded, {done['cached']} were "
              f"already cached")
    return f"Pre-encoding: {counts}" if done["state"] == "running" else f"Pre-encoded: {counts}."


def stop(store: Store, project: str) -> bool:
    """Ask a running pre-encode to stop (the trainer ends after the pair in hand)."""
    job = _read_job(job_dir(store, project))
    if not job or not process_group.alive(job.get("pid")):
        return False
    return launchers.signal_group(job["pid"], signal.SIGTERM)


class PreEncodes:
    """The pre-encodes this app started, one per project, each reaped once it has ended so
    that none lingers as a zombie (the Dataset tab's; the CLI waits for its own)."""

    def __init__(self, store: Store):
        self.store = store
        self._children: dict[str, subprocess.Popen] = {}

    def start(self, project: str, opts: TrainOptions) -> dict:
        self._children[project] = pre_encode(self.store, project, opts)
        return self.progress(project)

    def progress(self, project: str) -> dict:
        child = self._children.get(project)
        if child is not None and child.poll() is not None:
            self._children.pop(project, None)
        return progress(self.store, project)


# -- freeing the disk --------------------------------------------------------------------

def _model_roots(store: Store, project: str) -> list[Path]:
    """One folder per model fingerprint the project's cache holds."""
    return sorted(d for d in cache_dir(store, project).glob("*") if d.is_dir())


def _in_use(store: Store, project: str) -> bool:
    """A running run loads its entries step by step, and a pre-encode writes them."""
    return bool(store.runs.list(project, statuses=ACTIVE)) or running(store, project)


def _refuse_while_used(store: Store, project: str, what: str) -> None:
    if _in_use(store, project):
        raise ValueError(f"cannot {what} the encode cache of {project!r} while a run or a "
                         f"pre-encode of it is running")


def prune(store: Store, project: str) -> dict:
    """Delete the entries that no current pair has, under every model and recorded settings
    of the project's cache: {removed, bytes, kept}. Entries under a model folder with no
    settings recorded (caches older than the records) cannot be keyed, and stay."""
    _refuse_while_used(store, project, "prune")
    roots = _model_roots(store, project)
    caches = [cache for root in roots for cache in EncodedCache.recorded(root)]
    used: set[str] = set()
    if caches:
        for pair in _pairs(store, project, with_errors=True):  # a fixed pair needs its entry
            try:
                used.update(keys_for(caches, pair))
            except OSError:  # a vanished image: its entry can never be used
                continue
    removed = freed = kept = 0
    keyed = {cache.root for cache in caches}
    for root in roots:
        for entry in entry_files(root):
            if root in keyed and entry.name[:-len(".safetensors")] not in used:
                freed += entry.stat().st_size
                os.unlink(entry.path)
                removed += 1
            else:
                kept += 1
    return {"removed": removed, "bytes": freed, "kept": kept}


def forget(store: Store, project: str, pair_ids: list[int]) -> int:
    """Delete the entries of these pairs (before the store deletes them: it needs their
    files), under every model and recorded settings; returns how many went. Nothing goes
    while a run or pre-encode of the project is running (it may be loading them): a later
    `prune` catches those."""
    if _in_use(store, project):
        return 0
    caches = [cache for root in _model_roots(store, project) for cache in EncodedCache.recorded(root)]
    removed = 0
    for pair_id in pair_ids if caches else ():
        row = store.pairs.get(project, pair_id)
        if row is None:
            continue
        try:
            keys = keys_for(caches, stored_pair(store, project, row))
        except OSError:
            continue
        for cache, key in zip(caches, keys):
            if cache.has(key):
                cache.path(key).unlink(missing_ok=True)
                removed += 1
    return removed


def clear(store: Store, project: str, model: Path | None = None) -> int:
    """Delete the project's cache (or one model's part of it); returns the bytes freed."""
    _refuse_while_used(store, project, "clear")
    folder = cache_dir(store, project)
    if model is not None:
        folder = folder / model_fingerprint(Path(model))
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
    shutil.rmtree(folder, ignore_errors=True)
    return freed
