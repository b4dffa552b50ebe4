"""Training runs in the store: one row per run. Which status may follow which is the job
manager's rule (studio/jobs/status.py); the store only keeps a status from being lost."""
from __future__ import annotations

import json
from typing import Any

from .core import NotFoundError, StoreCore, now

STATUSES = ("queued", "running", "stopping", "stopped", "finished", "failed")
ACTIVE = ("running", "stopping")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["config"] = json.loads(row.get("config") or "{}")
    return row


class Runs:
    def __init__(self, store: StoreCore):
        self.store = store
        self.db = store.db
        self._lock = store._lock

    def create(self, project: str, name: str, run_dir: str, config: dict, devices: str) -> dict:
        pid = self.store.require_project(project)["id"]
        row = {"project_id": pid, "name": name, "status": "queued", "run_dir": run_dir,
               "config": json.dumps(config), "devices": devices, "created_at": now()}
        with self.store.write():
            row["id"] = self.db["runs"].insert(row).last_pk
        return self.get(row["id"])

    def get(self, run_id: int) -> dict | None:
        with self._lock:
            rows = list(self.db["runs"].rows_where("id = ?", [run_id], limit=1))
        return _decode(rows[0]) if rows else None

    def require(self, run_id: int) -> dict:
        run = self.get(run_id)
        if run is None:
            raise NotFoundError(f"no run with id {run_id}; see: python -m studio runs list")
        return run

    def update(self, run_id: int, **fields) -> dict:
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        with self.store.write():
            self.db["runs"].update(run_id, fields)
        return self.get(run_id)

    def move(self, run_id: int, current: str, new: str, **fields) -> dict | None:
        """Set the status to `new` only if it is still `current` (another process may have
        settled the run since it was read); returns the row, or None when it was not."""
        if new not in STATUSES:
            raise ValueError(f"unknown run status {new!r}")
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        columns = {"status": new, **fields}
        unknown = set(columns) - set(self.db["runs"].columns_dict)
        if unknown:  # column names are the one part of the UPDATE that is not a parameter
            raise ValueError(f"not columns of runs: {', '.join(sorted(unknown))}")
        with self.store.write():
            moved = self.db.execute(
                f"UPDATE runs SET {', '.join(f'{c} = ?' for c in columns)} "
                "WHERE id = ? AND status = ?", [*columns.values(), run_id, current]).rowcount
        return self.get(run_id) if moved else None

    def list(self, project: str | None = None, statuses: tuple[str, ...] | None = None) -> list[dict]:
        where, params = [], []
        if project:
            where.append("project_id = ?")
            params.append(self.store.require_project(project)["id"])
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            params += list(statuses)
        with self._lock:
            rows = self.db["runs"].rows_where(" AND ".join(where) or None, params, order_by="id")
            return [_decode(r) for r in rows]

    def project_name(self, run: dict) -> str:
        with self._lock:
            return self.db["projects"].get(run["project_id"])["name"]

    def delete(self, run_id: int) -> None:
        with self.store.write():
            self.db.execute("DELETE FROM adapters WHERE run_id = ?", [run_id])
            self.db.execute("DELETE FROM runs WHERE id = ?", [run_id])

    def adapter_steps(self, run_id: int) -> set[int]:
        with self._lock:
            return {r["step"] for r in self.db["adapters"].rows_where("run_id = ?", [run_id])}

    def drop_adapters(self, run_id: int, steps: set[int]) -> None:
        """Forget a run's checkpoints (their files are gone: retention deleted them)."""
        steps = sorted(s for s in steps if s is not None)
        if not steps:
            return
        with self.store.write():
            self.db.execute(f"DELETE FROM adapters WHERE run_id = ? AND step IN "
                            f"({','.join('?' * len(steps))})", [run_id, *steps])
