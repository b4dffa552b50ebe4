"""A project's attached data source: parquet shards read in place, never imported.

One per project, kept in the project row's settings (JSON) under "source", so deleting the
project drops it and no table or migration is needed. What the record holds is the caller's
(studio/dataset/parquet_rows.py describes the shards); the store only keeps it.
"""
from __future__ import annotations

import json
from typing import Any

from .core import StoreCore, now

KEY = "source"


class Sources:
    def __init__(self, store: StoreCore):
        self.store = store
        self.db = store.db

    def get(self, project: str) -> dict[str, Any] | None:
        return _settings(self.store.require_project(project)).get(KEY)

    def attach(self, project: str, source: dict[str, Any]) -> dict[str, Any]:
        """Record `source` (a JSON-able dict) for the project, replacing any other."""
        record = {**source, "attached_at": now()}
        self._update(project, lambda settings: {**settings, KEY: record})
        return record

    def detach(self, project: str) -> bool:
        """Forget the project's source; False if it had none."""
        had = []
        self._update(project, lambda settings: had.append(settings.pop(KEY, None)) or settings)
        return had[0] is not None

    def _update(self, project: str, change) -> None:
        with self.store.write():  # read and write in one transaction: no update is lost
            row = self.store.require_project(project)
            self.db["projects"].update(row["id"], {"settings": json.dumps(change(_settings(row)))})


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row.get("settings") or "{}")
