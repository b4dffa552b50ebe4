"""A launch reuses the stored validation: only pairs changed since their last full check are
checked again, a file gone from disk is still caught before training with its pair named,
and the export reads pairs in batches (its queries do not grow with the pairs)."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from studio.dataset.export import MissingImage, export_dataset
from studio.dataset.ingest import ingest
from studio.dataset.instructions import set_instruction
from studio.dataset.report import ImportReport
from studio.dataset.sources import Candidate, bytes_ref
from studio.dataset.validate import check_for_launch, validate_project
from studio.jobs.launch import TrainOptions
from studio.jobs.presets import TRAIN_PRESETS
from studio.jobs.manager import JobManager
from studio.store import Store

PIXELS = 4096


def png() -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (32, 32), os.urandom(32 * 32 * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def add_pairs(store: Store, project: str, n: int) -> list[dict]:
    """`n` pairs of distinct random images (no duplicates), through the normal import."""
    store.create_project(project)
    ingest(store, project, [Candidate(row=str(i), sample_id=f"pair_{i}", source=bytes_ref("s", png()),
                                      target=bytes_ref("t", png()), instruction=f"edit {i}")
                            for i in range(n)], ImportReport())
    return list(store.pairs.iterate(project))


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "projects")
    yield store
    store.close()


def test_a_launch_checks_again_only_the_pairs_changed_since_their_last_check(store):
    pairs = add_pairs(store, "p", 6)
    assert check_for_launch(store, "p", PIXELS).rechecked == 6  # imported: never fully checked
    again = check_for_launch(store, "p", PIXELS)
    assert again.rechecked == 0 and (again.pairs, again.ok, again.errors) == (6, 6, 0)
    set_instruction(store, "p", pairs[2]["id"], "edit two, reworded")
    assert check_for_launch(store, "p", PIXELS).rechecked == 1
    assert check_for_launch(store, "p", PIXELS).rechecked == 0
    # Another max_pixels can change size issues: every pair is checked at it.
    assert check_for_launch(store, "p", 2 * PIXELS).rechecked == 6
    # A full validation marks what it checked too.
    validate_project(store, "p", PIXELS)
    assert check_for_launch(store, "p", PIXELS).rechecked == 0


def test_a_changed_instruction_is_checked_again_and_its_error_named(store):
    pairs = add_pairs(store, "p", 4)
    check_for_launch(store, "p", PIXELS)
    set_instruction(store, "p", pairs[1]["id"], "   ")
    report = check_for_launch(store, "p", PIXELS)
    assert report.errors == 1 and report.rechecked == 1
    assert [(p["id"], p["message"]) for p in report.problems] == [(pairs[1]["id"], "empty instruction")]
    set_instruction(store, "p", pairs[1]["id"], "make it blue")
    assert check_for_launch(store, "p", PIXELS).errors == 0


def test_a_file_deleted_after_the_check_is_caught_and_a_restored_one_clears(store):
    pairs = add_pairs(store, "p", 4)
    check_for_launch(store, "p", PIXELS)  # every pair marked as checked
    gone = store.project_dir("p") / pairs[3]["target_path"]
    data = gone.read_bytes()
    gone.unlink()
    report = check_for_launch(store, "p", PIXELS)
    assert report.errors == 1 and report.problems[0]["id"] == pairs[3]["id"]
    assert "target image file is missing" in report.problems[0]["message"]
    gone.write_bytes(data)  # a stored error is checked again: the pair is fine once more
    assert check_for_launch(store, "p", PIXELS).errors == 0


def test_submit_refuses_a_pair_whose_image_went_missing_naming_it(store, demo_model):
    pairs = add_pairs(store, "p", 3)
    jobs = JobManager(store)
    opts = TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS["Demo on CPU"],
                                   "model": str(demo_model), "max_pixels": PIXELS})
    check_for_launch(store, "p", PIXELS)  # as a previous launch left it
    (store.project_dir("p") / pairs[0]["source_path"]).unlink()
    with pytest.raises(ValueError, match=rf"pair {pairs[0]['id']} \(pair_0\): source image file is missing"):
        jobs.submit("p", opts)
    assert jobs.runs.list() == []


def test_the_export_fails_naming_the_pair_whose_file_vanished_after_the_check(store, tmp_path):
    pairs = add_pairs(store, "p", 3)
    check_for_launch(store, "p", PIXELS)
    (store.project_dir("p") / pairs[1]["target_path"]).unlink()
    with pytest.raises(MissingImage, match=rf"pair {pairs[1]['id']} \(pair_1\)"):
        export_dataset(store, "p", tmp_path / "run", link=True)


def statements(store: Store, action) -> list[str]:
    seen: list[str] = []
    store.db.conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        store.db.conn.set_trace_callback(None)
    return seen


def test_export_and_launch_check_queries_do_not_grow_with_the_pairs(store, tmp_path):
    for name, n in (("small", 3), ("large", 30)):
        add_pairs(store, name, n)
        check_for_launch(store, name, PIXELS)
    counts = {}
    for name in ("small", "large"):
        counts[name] = (len(statements(store, lambda: export_dataset(store, name, tmp_path / name, link=True))),
                        len(statements(store, lambda: check_for_launch(store, name, PIXELS))))
    assert counts["small"] == counts["large"], counts
    assert len(list((tmp_path / "large" / "images").iterdir())) == 60
