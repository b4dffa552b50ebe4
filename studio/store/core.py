"""The store's core: one SQLite file (WAL mode) at <projects>/studio.db, via sqlite-utils;
its connection, write transactions and migrations, and the small tables (projects, edits,
adapters). Pairs and runs (pairs.py, runs.py) build on it.

Schema changes are numbered migrations (migrations.py); PRAGMA user_version records how many ran.
All access goes through one connection guarded by a lock, so the UI's worker threads
share it safely. Several processes (the UI, CLI imports, training jobs) may open the same
file: every write goes through Store.write(), which takes SQLite's write lock up front.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils
from PIL import Image

from ..paths import check_project_name
from . import migrations


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# How long a writer waits for another process's write transaction to end.
BUSY_TIMEOUT_S = 30


class NotFoundError(LookupError):
    """A project, pair, run or proposal that the store does not hold. Its message is meant for
    the user (a plain KeyError would be shown quoted, and would hide a programming error)."""


class StoreCore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "studio.db"
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        with self._lock:
            self.db.enable_wal()
            self.db.execute("PRAGMA foreign_keys=ON")
            self.migrate()

    # -- transactions -------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction; every write of the store goes through here.

        BEGIN IMMEDIATE takes SQLite's write lock before the first read, waiting up to
        BUSY_TIMEOUT_S for another process's writer. A deferred BEGIN would read first and
        ask for the lock at its first write; if another process committed in between, SQLite
        fails at once with "database is locked" (the busy timeout cannot help a stale read).
        So reads that decide a write belong inside the same write() block. A nested block is
        a savepoint of the outer transaction.
        """
        with self._lock:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield self.db
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.conn.execute("COMMIT")
            except BaseException:
                self.db.rollback()
                raise

    # -- schema -------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> int:
        """Run the migrations this file has not seen yet, each in its own transaction.
        The version is read under the write lock, so two processes opening a new file at
        once do not both run a migration."""
        latest = migrations.SCHEMA_VERSION
        if self.version == latest:  # up to date: nothing to lock for
            return latest
        while True:
            with self.write():
                current = self.version
                if current > latest:
                    raise RuntimeError(
                        f"{self.path} has schema version {current}, newer than this studio "
                        f"({latest}); upgrade the studio"
                    )
                if current == latest:
                    return current
                migrations.MIGRATIONS[current](self.db)
                self.db.execute(f"PRAGMA user_version = {current + 1}")

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # -- projects -----------------------------------------------------------
    def project_dir(self, name: str) -> Path:
        return self.root / check_project_name(name)

    def create_project(self, name: str) -> dict[str, Any]:
        check_project_name(name)
        with self.write():
            if self.get_project(name):
                raise ValueError(f"project {name!r} already exists")
            self.db["projects"].insert({"name": name, "created_at": now(), "settings": "{}"})
        self.project_dir(name).mkdir(parents=True, exist_ok=True)
        return self.get_project(name)

    def get_project(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db["projects"].rows_where("name = ?", [name], limit=1))
        return rows[0] if rows else None

    def require_project(self, name: str) -> dict[str, Any]:
        project = self.get_project(name)
        if project is None:
            raise NotFoundError(f"no project named {name!r}; create it with: python -m studio project create {name}")
        return project

    def list_projects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db["projects"].rows_where(order_by="name"))

    def delete_project(self, name: str) -> None:
        with self.write():
            project = self.require_project(name)
            for table in ("edits", "adapters", "runs", "instruction_proposals",
                          "instruction_history", "instruction_jobs", "pairs"):
                self.db.execute(f"DELETE FROM {table} WHERE project_id = ?", [project["id"]])
            self.db.execute("DELETE FROM projects WHERE id = ?", [project["id"]])
        shutil.rmtree(self.project_dir(name), ignore_errors=True)

    # -- edit history -------------------------------------------------------
    def save_edit(self, project: str, inputs: list[Image.Image], output: Image.Image,
                  params: dict[str, Any], seconds: float, kind: str = "edit") -> dict[str, Any]:
        """Keep one finished edit or comparison grid: its images and params.json under
        <project>/edits/<key>/, its row in `edits`."""
        pid = self.require_project(project)["id"]
        folder = self.project_dir(project) / "edits" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        input_paths = []
        for i, image in enumerate(inputs):
            input_paths.append(str(folder / f"input_{i}.png"))
            image.save(input_paths[-1])
        output.save(folder / "output.png")
        (folder / "params.json").write_text(json.dumps(params, indent=2, default=str))
        row = {key: params.get(key) for key in
               ("model", "prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height")}
        row.update(project_id=pid, adapters=json.dumps(params.get("adapters", [])),
                   inputs=json.dumps(input_paths), output_path=str(folder / "output.png"),
                   seconds=round(seconds, 3), created_at=now(), kind=kind,
                   params=json.dumps(params, default=str))
        with self.write():
            row["id"] = self.db["edits"].insert(row).last_pk
        return row

    def _by_id(self, table: str, row_id: int) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db[table].rows_where("id = ?", [row_id], limit=1))
        return rows[0] if rows else None

    def get_edit(self, edit_id: int) -> dict[str, Any] | None:
        return self._by_id("edits", edit_id)

    def list_edits(self, project: str, limit: int = 50) -> list[dict[str, Any]]:
        pid = self.require_project(project)["id"]
        with self._lock:
            return list(self.db["edits"].rows_where(
                "project_id = ?", [pid], order_by="id desc", limit=limit))

    # -- adapters -----------------------------------------------------------
    def add_adapter(self, project: str, name: str, path: str | Path, run_id: int | None = None,
                    step: int | None = None, origin: dict | None = None) -> dict[str, Any]:
        """Register a LoRA file (a training checkpoint, an external file, or one made from
        other adapters: `origin` records how, as JSON)."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"adapter file not found: {path}")
        pid = self.require_project(project)["id"]
        row = {"project_id": pid, "run_id": run_id, "name": name, "step": step,
               "path": str(path), "created_at": now(),
               "origin": json.dumps(origin) if origin else None}
        with self.write():
            row["id"] = self.db["adapters"].insert(row).last_pk
        return row

    def get_adapter(self, adapter_id: int) -> dict[str, Any] | None:
        return self._by_id("adapters", adapter_id)

    def require_adapter(self, adapter_id: int) -> dict[str, Any]:
        adapter = self.get_adapter(adapter_id)
        if adapter is None:
            raise NotFoundError(f"no adapter with id {adapter_id}; see: python -m studio adapters "
                                f"list --project NAME")
        return adapter

    def list_adapters(self, project: str) -> list[dict[str, Any]]:
        pid = self.require_project(project)["id"]
        with self._lock:
            return list(self.db["adapters"].rows_where("project_id = ?", [pid], order_by="id"))

    def run_checkpoints(self, project: str) -> dict[int, list[dict[str, Any]]]:
        """The project's training checkpoints by run id, each run's in step order."""
        runs: dict[int, list[dict[str, Any]]] = {}
        for row in self.list_adapters(project):
            if row["run_id"] is not None:
                runs.setdefault(row["run_id"], []).append(row)
        return {run: sorted(rows, key=lambda r: r["step"] or 0) for run, rows in runs.items()}
