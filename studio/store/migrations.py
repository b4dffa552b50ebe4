"""The store's schema, as numbered migrations: PRAGMA user_version records how many ran.
Append only: never edit a migration that has shipped, add the next one."""
from __future__ import annotations

from typing import Callable

import sqlite_utils


def _v1_initial(db: sqlite_utils.Database) -> None:
    db["projects"].create(
        {"id": int, "name": str, "created_at": str, "settings": str},
        pk="id", not_null={"name", "created_at"}, defaults={"settings": "{}"},
    )
    db["projects"].create_index(["name"], unique=True)
    db["pairs"].create(
        {"id": int, "project_id": int, "sample_id": str, "source_path": str,
         "target_path": str, "instruction": str, "extra_sources": str,
         "split": str, "created_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id")],
        not_null={"project_id", "sample_id", "created_at"},
        defaults={"extra_sources": "[]", "split": "train", "instruction": ""},
    )
    db["pairs"].create_index(["project_id", "sample_id"], unique=True)
    db["runs"].create(
        {"id": int, "project_id": int, "name": str, "status": str, "command": str,
         "config": str, "run_dir": str, "pid": int, "exit_code": int,
         "created_at": str, "started_at": str, "ended_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id")],
        not_null={"project_id", "status", "created_at"}, defaults={"config": "{}"},
    )
    db["runs"].create_index(["project_id", "status"])
    db["adapters"].create(
        {"id": int, "project_id": int, "run_id": int, "name": str, "step": int,
         "path": str, "created_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id"), ("run_id", "runs", "id")],
        not_null={"name", "path", "created_at"},
    )
    db["adapters"].create_index(["project_id"])
    db["edits"].create(
        {"id": int, "project_id": int, "model": str, "prompt": str, "negative_prompt": str,
         "seed": int, "steps": int, "cfg": float, "width": int, "height": int,
         "adapters": str, "inputs": str, "output_path": str, "seconds": float,
         "created_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id")],
        not_null={"project_id", "output_path", "created_at"}, defaults={"adapters": "[]"},
    )
    db["edits"].create_index(["project_id", "created_at"])


def _v2_pair_curation(db: sqlite_utils.Database) -> None:
    """What dataset curation needs per pair: content hashes, sizes, validation state."""
    pairs = db["pairs"]
    for column, kind in (("source_hash", str), ("target_hash", str), ("pair_key", str),
                         ("source_width", int), ("source_height", int),
                         ("target_width", int), ("target_height", int),
                         ("issues", str), ("meta", str), ("updated_at", str)):
        pairs.add_column(column, kind)
    pairs.add_column("status", str, not_null_default="ok")
    # (project_id, id) serves paging; pair_key makes re-imports add nothing.
    pairs.create_index(["project_id", "id"], index_name="idx_pairs_project_page")
    pairs.create_index(["project_id", "pair_key"], unique=True, index_name="idx_pairs_key")
    pairs.create_index(["project_id", "source_hash"], index_name="idx_pairs_source_hash")
    pairs.create_index(["project_id", "target_hash"], index_name="idx_pairs_target_hash")
    pairs.create_index(["project_id", "split", "id"], index_name="idx_pairs_split")


def _v3_edit_kinds(db: sqlite_utils.Database) -> None:
    """Comparisons join the edit history: a kind, and the full parameters as JSON."""
    db["edits"].add_column("kind", str, not_null_default="edit")
    db["edits"].add_column("params", str)


def _v4_run_jobs(db: sqlite_utils.Database) -> None:
    """Training jobs: which devices a run holds (for the queue) and why it failed."""
    db["runs"].add_column("devices", str)
    db["runs"].add_column("error", str)
    db["runs"].create_index(["status", "id"], index_name="idx_runs_status")
    db["adapters"].create_index(["run_id", "step"], index_name="idx_adapters_run_step")


def _v5_scheduler_jobs(db: sqlite_utils.Database) -> None:
    """Multi-node runs submitted to Slurm are followed by their scheduler job id."""
    db["runs"].add_column("scheduler_job", str)


def _v6_checked_pixels(db: sqlite_utils.Database) -> None:
    """The max_pixels a pair's stored issues were fully checked at (NULL: not since it last
    changed), so a launch re-checks only the pairs that changed (studio/dataset/validate.py)."""
    db["pairs"].add_column("checked_pixels", int)


def _v7_instruction_proposals(db: sqlite_utils.Database) -> None:
    """Instructions written by a VL model (studio/engine/instruction_writer.py): each run
    of the writer, its proposals awaiting review, and every instruction's previous text so
    any change can be undone. `instruction_origin` tells a person's text ('') from an
    accepted proposal ('writer'): a person's is never replaced unless the user asks."""
    db["pairs"].add_column("instruction_origin", str, not_null_default="")
    db["instruction_jobs"].create(
        {"id": int, "project_id": int, "model": str, "prompt": str, "max_words": int,
         "scope": str, "status": str, "total": int, "done": int, "failed": int,
         "error": str, "notes": str, "created_at": str, "ended_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id")],
        not_null={"project_id", "status", "created_at"}, defaults={"notes": "[]"},
    )
    db["instruction_proposals"].create(
        {"id": int, "project_id": int, "job_id": int, "pair_id": int, "text": str,
         "status": str, "created_at": str, "decided_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id"),
                               ("job_id", "instruction_jobs", "id")],
        not_null={"project_id", "pair_id", "text", "status", "created_at"},
    )
    db["instruction_proposals"].create_index(["project_id", "status", "id"],
                                             index_name="idx_proposals_status")
    db["instruction_history"].create(
        {"id": int, "project_id": int, "pair_id": int, "previous": str, "previous_origin": str,
         "new": str, "origin": str, "changed_at": str},
        pk="id", foreign_keys=[("project_id", "projects", "id")],
        not_null={"project_id", "pair_id", "changed_at"},
    )
    db["instruction_history"].create_index(["pair_id", "id"], index_name="idx_history_pair")


def _v8_adapter_origin(db: sqlite_utils.Database) -> None:
    """Where an adapter made from others came from (JSON: the operation, its parents by id,
    name and path, their strengths or weights); NULL for checkpoints and imported files."""
    db["adapters"].add_column("origin", str)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_initial, _v2_pair_curation, _v3_edit_kinds, _v4_run_jobs, _v5_scheduler_jobs,
    _v6_checked_pixels, _v7_instruction_proposals, _v8_adapter_origin]
SCHEMA_VERSION = len(MIGRATIONS)
