"""Instruction proposals: the runs of the instruction writer and what each proposed.

A proposal waits (`pending`) until a person accepts, edits or rejects it; accepting writes
the pair's instruction through Pairs.set_instructions (which keeps the previous text). A
run's row records the model, the prompt and the limit it used, and how far it got.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from .core import NotFoundError, StoreCore, now

PENDING, ACCEPTED, REJECTED, SUPERSEDED = "pending", "accepted", "rejected", "superseded"


class Proposals:
    def __init__(self, store: StoreCore):
        self.store = store
        self.db = store.db
        self._lock = store._lock

    def _pid(self, project: str) -> int:
        return self.store.require_project(project)["id"]

    # -- writer runs --------------------------------------------------------
    def start_job(self, project: str, model: str, prompt: str, max_words: int, scope: str,
                  total: int) -> int:
        with self.store.write():
            return self.db["instruction_jobs"].insert(
                {"project_id": self._pid(project), "model": model, "prompt": prompt,
                 "max_words": max_words, "scope": scope, "status": "running", "total": total,
                 "done": 0, "failed": 0, "notes": "[]", "created_at": now()}).last_pk

    def job_step(self, job_id: int, done: int, failed: int, note: str | None = None) -> None:
        with self.store.write():
            notes = json.loads(self.db["instruction_jobs"].get(job_id)["notes"] or "[]")
            self.db["instruction_jobs"].update(job_id, {
                "done": done, "failed": failed,
                "notes": json.dumps(notes + [note] if note else notes, ensure_ascii=False)})

    def end_job(self, job_id: int, status: str, error: str | None = None) -> None:
        with self.store.write():
            self.db["instruction_jobs"].update(job_id, {"status": status, "error": error,
                                                        "ended_at": now()})

    def job(self, job_id: int) -> dict[str, Any]:
        with self._lock:
            row = dict(self.db["instruction_jobs"].get(job_id))
        row["notes"] = json.loads(row["notes"] or "[]")
        return row

    def latest_job(self, project: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT id FROM instruction_jobs WHERE project_id = ? "
                                  "ORDER BY id DESC LIMIT 1", [self._pid(project)]).fetchone()
        return self.job(row[0]) if row else None

    # -- proposals ----------------------------------------------------------
    def add(self, project: str, job_id: int | None, pair_id: int, text: str) -> int:
        """Store one proposal; an older pending one for the same pair is superseded."""
        with self.store.write():
            pid = self._pid(project)
            self.db.execute("UPDATE instruction_proposals SET status = ?, decided_at = ? "
                            "WHERE project_id = ? AND pair_id = ? AND status = ?",
                            [SUPERSEDED, now(), pid, pair_id, PENDING])
            return self.db["instruction_proposals"].insert(
                {"project_id": pid, "job_id": job_id, "pair_id": pair_id, "text": text,
                 "status": PENDING, "created_at": now()}).last_pk

    def pending(self, project: str, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Pending proposals, oldest first, with their pair's sample id, images and current
        instruction (and whether a person wrote it)."""
        with self._lock:
            return self.db.execute_returning_dicts(
                "SELECT p.id, p.pair_id, p.job_id, p.text, p.created_at, s.sample_id, "
                "s.source_path, s.target_path, s.extra_sources, s.instruction, "
                "s.instruction_origin FROM instruction_proposals p JOIN pairs s ON s.id = p.pair_id "
                "WHERE p.project_id = ? AND p.status = ? ORDER BY p.id LIMIT ? OFFSET ?",
                [self._pid(project), PENDING, int(limit), int(offset)])

    def count(self, project: str, status: str = PENDING) -> int:
        with self._lock:
            return self.db.execute("SELECT count(*) FROM instruction_proposals WHERE project_id = ? "
                                   "AND status = ?", [self._pid(project), status]).fetchone()[0]

    def get(self, project: str, proposal_id: int) -> dict[str, Any]:
        with self._lock:
            rows = list(self.db["instruction_proposals"].rows_where(
                "project_id = ? AND id = ?", [self._pid(project), proposal_id]))
        if not rows:
            raise NotFoundError(f"project {project!r} has no instruction proposal {proposal_id}")
        return rows[0]

    def decide(self, ids: Iterable[int], status: str, texts: dict[int, str] | None = None) -> None:
        """Mark proposals accepted or rejected (an accepted one keeps the text applied)."""
        texts = texts or {}
        with self.store.write():
            for proposal_id in ids:
                fields = {"status": status, "decided_at": now()}
                if proposal_id in texts:
                    fields["text"] = texts[proposal_id]
                self.db["instruction_proposals"].update(proposal_id, fields)
