import sqlite3

import pytest

from studio.store import NotFoundError, migrations as store_module
from studio.store import SCHEMA_VERSION, Store
from tests.conftest import make_image


def test_new_store_is_migrated_and_in_wal_mode(tmp_path):
    store = Store(tmp_path)
    assert store.version == SCHEMA_VERSION
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"projects", "pairs", "runs", "adapters", "edits"} <= set(store.db.table_names())


def test_reopening_keeps_data_and_runs_no_migration_twice(tmp_path):
    Store(tmp_path).create_project("alpha")
    again = Store(tmp_path)
    assert again.version == SCHEMA_VERSION
    assert [p["name"] for p in again.list_projects()] == ["alpha"]


def test_a_new_migration_runs_once_on_an_old_store(tmp_path, monkeypatch):
    Store(tmp_path).create_project("alpha")
    calls = []

    def add_notes(db):
        calls.append(1)
        db["projects"].add_column("notes", str)

    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS + [add_notes])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    upgraded = Store(tmp_path)
    assert upgraded.version == SCHEMA_VERSION + 1
    assert "notes" in upgraded.db["projects"].columns_dict
    assert upgraded.get_project("alpha") is not None
    Store(tmp_path)
    assert calls == [1]


def test_a_failing_migration_leaves_the_store_at_its_old_version(tmp_path, monkeypatch):
    Store(tmp_path)

    def broken(db):
        db["projects"].add_column("half_done", str)
        raise RuntimeError("boom")

    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS + [broken])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        Store(tmp_path)
    conn = sqlite3.connect(tmp_path / "studio.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    columns = [row[1] for row in conn.execute("PRAGMA table_info(projects)")]
    assert "half_done" not in columns


def test_a_store_from_a_newer_studio_is_refused(tmp_path):
    Store(tmp_path).db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(RuntimeError, match="newer"):
        Store(tmp_path)


def test_projects_get_a_folder_and_unique_safe_names(tmp_path):
    store = Store(tmp_path)
    store.create_project("cats-v1")
    assert (tmp_path / "cats-v1").is_dir()
    with pytest.raises(ValueError, match="already exists"):
        store.create_project("cats-v1")
    for bad in ("../escape", "a/b", ".hidden", "", "x" * 65):
        with pytest.raises(ValueError, match="invalid project name"):
            store.create_project(bad)
    assert [p["name"] for p in store.list_projects()] == ["cats-v1"]


def test_save_edit_keeps_images_and_parameters(tmp_path):
    store = Store(tmp_path)
    store.create_project("p")
    params = {"model": "demo", "prompt": "add a hat", "negative_prompt": "", "seed": 3,
              "steps": 2, "cfg": 1.0, "width": 32, "height": 32}
    row = store.save_edit("p", [make_image()], make_image(32, 32, seed=1), params, 1.234)
    (saved,) = store.list_edits("p")
    assert saved["id"] == row["id"] and saved["prompt"] == "add a hat" and saved["seed"] == 3
    assert (tmp_path / "p" / "edits").is_dir()
    from PIL import Image
    assert Image.open(saved["output_path"]).size == (32, 32)
    with pytest.raises(NotFoundError):
        store.save_edit("missing", [make_image()], make_image(), params, 1.0)
