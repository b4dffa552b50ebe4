"""Several processes writing one store at once: every write transaction takes SQLite's
write lock up front (BEGIN IMMEDIATE) and waits for it, so none fails with "database is
locked", no row is lost or stored twice, and a read-then-write sees no stale data."""
from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.dataset.checks import pair_issues
from studio.dataset.importers import import_folder
from studio.dataset.ingest import mark_duplicates
from studio.dataset.instructions import Rewrite, rewrite_instructions, set_instruction
from studio.dataset.split import hold_out
from studio.dataset.validate import validate_project
from studio.store.pairs import Pairs, status_of
from studio.store import SCHEMA_VERSION, Store
from tests.dataset_helpers import encoded, store  # noqa: F401 (fixture)

PREFIX = "sks, "
UNIQUE, SHARED, VARIANTS, UNTITLED = 200, 40, 5, 5
SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter each: its own Store


def tiny_jpeg(seed: int) -> bytes:
    """Noise, so that every seed gives different bytes (make_image repeats every 128 seeds)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", quality=80)


def write_pair(folder: Path, name: str, seed: int, instruction: str | None) -> None:
    (folder / f"source_{name}.jpg").write_bytes(tiny_jpeg(seed))
    (folder / f"edited_{name}.jpg").write_bytes(tiny_jpeg(seed + 1))
    if instruction is not None:
        (folder / f"{name}.txt").write_text(instruction)


def import_folder_set(root: Path, importers: int) -> tuple[list[Path], Counter]:
    """One folder per importer: pairs of its own, pairs every folder holds byte for byte
    (stored once), the shared images under another instruction (duplicates: each stored,
    each warned), and pairs without an instruction (errors until a prefix goes on).
    Returns the folders and the instructions the project must end up with."""
    folders, expected = [], Counter()
    for k in range(importers):
        folder = root / f"import{k}"
        folder.mkdir(parents=True)
        own = [(f"k{k}n{i}", 1000 * (k + 1) + 2 * i, f"make picture {k}.{i} warmer")
               for i in range(UNIQUE)]
        shared = [(f"s{i}", 2 * i, f"shared {i}") for i in range(SHARED)]
        variants = [(f"v{k}n{i}", 2 * i, f"variant {k} of shared {i}") for i in range(VARIANTS)]
        untitled = [(f"u{k}n{i}", 500 + 100 * k + 2 * i, None) for i in range(UNTITLED)]
        for name, seed, instruction in own + shared + variants + untitled:
            write_pair(folder, name, seed, instruction)
        expected.update(text or "" for _, _, text in own + variants + untitled)
        folders.append(folder)
    expected.update(f"shared {i}" for i in range(SHARED))
    return folders, expected


def importer(projects: str, folder: str, start, results) -> None:
    store = Store(projects)
    start.wait()
    try:
        report = import_folder(store, "p", folder)
        results.put(("import", report.added, report.already_present, report.errors))
    except Exception as exc:  # noqa: BLE001  (the test reports it)
        results.put(("crash", repr(exc)))


def rewriter(projects: str, start, stop, rewrote, results) -> None:
    """Puts the prefix on, again and again while the imports run, and once after. (A pause
    between passes, as between a person's clicks: SQLite's busy wait is not a fair queue,
    and a writer that never lets go would starve the others.) `rewrote` is set after the
    first pass: nothing stops it before that."""
    store = Store(projects)
    start.wait()
    try:
        passes = 0
        while not stop.is_set():
            rewrite_instructions(store, "p", Rewrite(prefix=PREFIX))
            passes += 1
            rewrote.set()
            time.sleep(0.02)
        rewrite_instructions(store, "p", Rewrite(prefix=PREFIX))
        results.put(("rewrite", passes))
    except Exception as exc:  # noqa: BLE001
        results.put(("crash", repr(exc)))


def run_at_once(projects: Path, folders: list[Path]) -> list[tuple]:
    """An importer per folder and a rewriter, separate processes released by one barrier."""
    start, stop, rewrote = SPAWN.Barrier(len(folders) + 1), SPAWN.Event(), SPAWN.Event()
    results = SPAWN.Queue()
    imports = [SPAWN.Process(target=importer, args=(str(projects), str(f), start, results))
               for f in folders]
    rewrites = SPAWN.Process(target=rewriter, args=(str(projects), start, stop, rewrote, results))
    for process in [*imports, rewrites]:
        process.start()
    outcomes = [results.get(timeout=120) for _ in imports]
    # The rewriter's first pass, before it is stopped: a handshake, not a hope that a loaded
    # machine scheduled it before the imports ended (it sets nothing if it crashed).
    rewrote.wait(timeout=120)
    stop.set()
    outcomes.append(results.get(timeout=120))
    for process in [*imports, rewrites]:
        process.join(timeout=30)
    return outcomes


@pytest.fixture
def shared_project(tmp_path):
    """A projects folder whose store holds project p, for processes to open."""
    Store(tmp_path / "projects").create_project("p")
    return tmp_path / "projects"


def test_three_importers_and_a_rewriter_at_once_store_every_row_exactly_once(shared_project, tmp_path):
    folders, expected = import_folder_set(tmp_path / "data", 3)
    outcomes = run_at_once(shared_project, folders)

    assert not [o for o in outcomes if o[0] == "crash"], outcomes
    imports = [o for o in outcomes if o[0] == "import"]
    assert all(not errors for *_, errors in imports), imports
    assert sum(added for _, added, _, _ in imports) == sum(expected.values())
    assert sum(added + present for _, added, present, _ in imports) == \
        3 * (UNIQUE + SHARED + VARIANTS + UNTITLED)
    [(_, passes)] = [o for o in outcomes if o[0] == "rewrite"]
    assert passes > 0  # the rewriter ran (while the imports did, as far as they overlapped)

    store = Store(shared_project)
    rows = list(store.pairs.iterate("p"))
    assert len(rows) == len({r["pair_key"] for r in rows}) == sum(expected.values())
    # Every instruction carries the prefix exactly once, over the text it was imported with.
    assert all(r["instruction"].startswith(PREFIX) for r in rows)
    assert not [r for r in rows if r["instruction"].startswith(PREFIX * 2)]
    assert Counter(r["instruction"][len(PREFIX):] for r in rows) == expected
    # A pair's issues were computed from its current instruction, not one read before a
    # concurrent rewrite (an "empty instruction" left on "sks, " would be such a lost update).
    duplicates = {pair_id for group in store.pairs.duplicate_groups("p") for pair_id, _ in group}
    assert len(duplicates) == VARIANTS * 4  # each shared pair and its three variants
    for row in rows:
        kept = [i for i in row["issues"] if not i["message"].startswith("duplicate:")]
        assert kept == pair_issues(row), row
        assert (len(kept) < len(row["issues"])) == (row["id"] in duplicates), row
        assert row["status"] == status_of(row["issues"])
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def opener(projects: str, name: str, start, results) -> None:
    start.wait()
    try:
        store = Store(projects)  # migrates a new file
        store.create_project(name)
        results.put(("opened", store.version))
    except Exception as exc:  # noqa: BLE001
        results.put(("crash", repr(exc)))


def test_processes_opening_a_new_store_at_once_migrate_it_once(tmp_path):
    projects = str(tmp_path / "projects")
    start, results = SPAWN.Barrier(3), SPAWN.Queue()
    processes = [SPAWN.Process(target=opener, args=(projects, f"p{k}", start, results))
                 for k in range(3)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == [("opened", SCHEMA_VERSION)] * 3
    assert [p["name"] for p in Store(projects).list_projects()] == ["p0", "p1", "p2"]


# -- every writer, one by one: its statements as SQLite ran them ------------------------
def pair_rows(n: int) -> list[dict]:
    return [{"sample_id": f"s{i}", "source_path": f"images/s{i}.jpg", "target_path": f"images/t{i}.jpg",
             "instruction": f"instruction {i}", "pair_key": f"key{i}", "source_hash": f"h{i % 2}",
             "target_hash": "t"} for i in range(n)]


WRITERS = {
    "create_project": lambda s: s.create_project("q"),
    "delete_project": lambda s: s.delete_project("p"),
    "save_edit": lambda s: s.save_edit("p", [Image.new("RGB", (4, 4))], Image.new("RGB", (4, 4)),
                                       {"prompt": "x"}, 0.1),
    "add_adapter": lambda s: s.add_adapter("p", "lora", s.root / "lora.safetensors"),
    "pairs.add": lambda s: s.pairs.add("p", pair_rows(3)),
    "set_instruction": lambda s: set_instruction(s, "p", 1, "new"),
    "pairs.set_split": lambda s: s.pairs.set_split("p", [1], "validation"),
    "pairs.set_issues": lambda s: s.pairs.set_issues([(1, [])]),
    "pairs.set_instructions": lambda s: s.pairs.set_instructions([(1, "new", [])]),
    "pairs.delete": lambda s: s.pairs.delete("p", [1]),
    "mark_duplicates": lambda s: mark_duplicates(s, "p"),
    "rewrite_instructions": lambda s: rewrite_instructions(s, "p", Rewrite(prefix=PREFIX)),
    "validate_project": lambda s: validate_project(s, "p"),
    "hold_out": lambda s: hold_out(s, "p", 1),
    "runs.create": lambda s: s.runs.create("p", "run", "", {}, "cpu"),
    "runs.update": lambda s: s.runs.update(1, status="running"),
    "runs.delete": lambda s: s.runs.delete(1),
}
READ_MODIFY_WRITE = {"pairs.add", "set_instruction", "pairs.delete", "mark_duplicates",
                     "rewrite_instructions", "delete_project", "hold_out"}


def traced(store: Store, action) -> list[str]:
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        action(store)
    finally:
        store.db.conn.set_trace_callback(None)
    return statements


def outside_transactions(statements: list[str]) -> list[str]:
    """The statements not between a BEGIN IMMEDIATE and its COMMIT or ROLLBACK."""
    outside, inside = [], False
    for sql in statements:
        keyword = sql.split(None, 1)[0].upper()
        if sql.upper().startswith("BEGIN IMMEDIATE"):
            inside = True
        elif keyword in ("COMMIT", "ROLLBACK") and not sql.upper().startswith("ROLLBACK TO"):
            inside = False
        elif not inside:
            outside.append(sql)
    return outside


@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_takes_the_write_lock_before_it_reads(store, name):  # noqa: F811
    store.pairs.add("p", pair_rows(2))
    store.runs.create("p", "run", "", {}, "cpu")
    (store.root / "lora.safetensors").write_bytes(b"x")
    statements = traced(store, WRITERS[name])
    assert any(s.upper().startswith("BEGIN IMMEDIATE") for s in statements), statements
    outside = outside_transactions(statements)
    assert not [s for s in outside if s.split(None, 1)[0].upper() in
                ("BEGIN", "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "ALTER", "DROP")], outside
    if name in READ_MODIFY_WRITE:  # what decides the write is read under the same lock
        before = statements[:next(i for i, s in enumerate(statements)
                                  if s.upper().startswith("BEGIN IMMEDIATE"))]
        assert not [s for s in before if "pairs" in s or "projects" in s], before


def test_a_rerun_after_a_crashed_import_adopts_the_image_files_it_left(store, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(250):  # two batches of the importer
        write_pair(folder, f"n{i}", 2 * i, f"instruction {i}")
    real_add, calls = Pairs.add, []

    def dies_on_the_second_batch(self, project, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise SystemExit("killed")  # the process dies: nothing of this batch is inserted
        return real_add(self, project, rows)

    monkeypatch.setattr(Pairs, "add", dies_on_the_second_batch)
    with pytest.raises(SystemExit):
        import_folder(store, "p", folder)
    monkeypatch.setattr(Pairs, "add", real_add)
    assert store.pairs.count("p") == 200
    assert len(image_files(store)) > len(used_files(store))  # the dead import's files

    report = import_folder(store, "p", folder)
    assert (report.added, report.already_present, report.errors) == (50, 200, [])
    assert store.pairs.count("p") == 250
    assert image_files(store) == used_files(store)  # none left orphaned


def image_files(store: Store) -> set[str]:
    folder = store.project_dir("p")
    return {p.relative_to(folder).as_posix() for p in (folder / "images").rglob("*") if p.is_file()}


def used_files(store: Store) -> set[str]:
    return {path for row in store.pairs.iterate("p")
            for path in (row["source_path"], row["target_path"], *row["extra_sources"])}
