"""A run's dataset folder: hard links to the project's images where possible, copies elsewhere,
the same metadata either way, and the trainer reads both."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from studio.dataset.export import export_dataset
from studio.dataset.synthetic_pairs import add_synthetic_pairs
from studio.store import Store
from studio.trainer.data import load_pairs


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "projects")
    store.create_project("p")
    add_synthetic_pairs(store, "p", 4)
    yield store
    store.close()


def images(folder: Path) -> list[Path]:
    return sorted((folder / "images").iterdir())


def test_a_linked_export_shares_the_stored_files_and_writes_the_same_metadata(store, tmp_path):
    copied = export_dataset(store, "p", tmp_path / "copied")
    linked = export_dataset(store, "p", tmp_path / "linked", link=True)
    assert (linked.linked, linked.copied) == (len(images(tmp_path / "linked")), 0) and linked.linked
    assert copied.linked == 0 and not linked.notes
    for name in ("metadata_edit.csv", "metadata_validation.csv"):
        assert (tmp_path / "linked" / name).read_bytes() == (tmp_path / "copied" / name).read_bytes()
    stored = {os.stat(p).st_ino for p in (store.root / "p").rglob("*") if p.is_file()}
    for image in images(tmp_path / "linked"):
        assert image.stat().st_ino in stored and image.stat().st_nlink >= 2
    for image in images(tmp_path / "copied"):
        assert image.stat().st_ino not in stored


@pytest.mark.skipif(os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev,
                    reason="needs a second filesystem (/dev/shm) to make links fail")
def test_links_fall_back_to_copies_on_another_filesystem_and_say_so(store):
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        result = export_dataset(store, "p", Path(other) / "run", link=True)
        assert result.linked == 0 and result.copied == len(images(Path(other) / "run"))
        assert any("hard links failed" in note for note in result.notes)
        pairs = load_pairs(Path(other) / "run")
        assert len(pairs) == result.pairs and all(p.target.is_file() for p in pairs)


def test_the_trainer_reads_a_linked_folder_as_a_copied_one(store, tmp_path):
    export_dataset(store, "p", tmp_path / "copied")
    export_dataset(store, "p", tmp_path / "linked", link=True)
    copied, linked = load_pairs(tmp_path / "copied"), load_pairs(tmp_path / "linked")
    assert [(p.sample_id, p.prompt) for p in copied] == [(p.sample_id, p.prompt) for p in linked]
    for a, b in zip(copied, linked):
        assert a.target.read_bytes() == b.target.read_bytes()
