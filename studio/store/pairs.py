"""Pair persistence for dataset curation: the `pairs` table of the project store.

Rows keep image paths relative to the project folder (so a projects folder can move) and
JSON text for lists and dicts; the methods here decode them. Paging reads ids from the
(project_id, id) index first, so a page costs the same at pair 50 and at pair 99,950.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from .core import NotFoundError, StoreCore, now

SPLITS = ("train", "validation")
_JSON_COLUMNS = {"extra_sources": [], "issues": [], "meta": {}}


def status_of(issues: list[dict[str, str]]) -> str:
    levels = {issue["level"] for issue in issues}
    return "error" if "error" in levels else "warning" if "warning" in levels else "ok"


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for column, empty in _JSON_COLUMNS.items():
        if column in row:  # a read of some columns decodes those
            value = row[column]
            row[column] = json.loads(value) if value and value != "[]" else type(empty)()
    return row


def _image_files(rows) -> set[str]:
    """The image paths of (source_path, target_path, extra_sources) rows."""
    return {path for source, target, extras in rows
            for path in (source, target, *json.loads(extras or "[]"))}


def _like(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


class Pairs:
    def __init__(self, store: StoreCore):
        self.store = store
        self.db = store.db
        self._lock = store._lock

    def project_id(self, project: str) -> int:
        return self.store.require_project(project)["id"]

    def path(self, project: str, relative: str) -> Path:
        return self.store.project_dir(project) / relative

    # -- writing ------------------------------------------------------------
    def add(self, project: str, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Insert new pairs in one transaction; returns (inserted rows, count already present).

        A row whose pair_key (its images and instruction) is already in the project is
        skipped, so importing the same data twice adds nothing. sample_ids are made unique
        by suffixing `_2`, `_3`… when another pair already uses the name.
        """
        inserted: list[dict[str, Any]] = []
        with self.store.write():  # what is present is read under the write lock
            pid = self.project_id(project)
            # Column names are the one part of the INSERT that is not a bound parameter.
            unknown = {c for row in rows for c in row} - set(self.db["pairs"].columns_dict)
            if unknown:
                raise ValueError(f"not columns of pairs: {', '.join(sorted(map(repr, unknown)))}")
            keys = [row["pair_key"] for row in rows]
            present = self._present(pid, "pair_key", keys)
            taken = self._present(pid, "sample_id", [row["sample_id"] for row in rows])
            for row in rows:
                if row["pair_key"] in present:
                    continue
                present.add(row["pair_key"])
                row = dict(row, project_id=pid, created_at=now(), updated_at=now())
                row["sample_id"] = self._unique_id(pid, row["sample_id"], taken)
                taken.add(row["sample_id"])
                for column in _JSON_COLUMNS:
                    row[column] = json.dumps(row.get(column) or _JSON_COLUMNS[column],
                                             ensure_ascii=False)
                columns = list(row)
                cursor = self.db.execute(  # plain SQL: sqlite-utils' insert() costs ~10× more per row
                    f"INSERT INTO pairs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    [row[c] for c in columns])
                row["id"] = cursor.lastrowid
                inserted.append(_decode(row))
        return inserted, len(rows) - len(inserted)

    def _present(self, pid: int, column: str, values: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in self.db.execute(
                f"SELECT {column} FROM pairs WHERE project_id = ? AND {column} IN ({marks})",
                [pid, *chunk]))
        return found

    def _unique_id(self, pid: int, wanted: str, taken: set[str]) -> str:
        candidate, n = wanted, 1
        while candidate in taken or self.db.execute(
                "SELECT 1 FROM pairs WHERE project_id = ? AND sample_id = ?",
                [pid, candidate]).fetchone():
            n += 1
            candidate = f"{wanted}_{n}"
        return candidate

    def set_instructions(self, updates: Iterable[tuple[int, str, list[dict[str, str]]]],
                         origin: str = "person") -> None:
        """(pair id, instruction, its re-checked issues) for many pairs in one transaction.
        The pair is marked unchecked: its files and duplicates are checked again at launch.
        Each changed text's previous one is kept (instruction_history) with `origin`: who
        changed it (person, rewrite, writer), so the change can be undone."""
        updates = list(updates)
        with self.store.write():
            self._record(updates, origin)
            self.db.conn.executemany(
                "UPDATE pairs SET instruction = ?, issues = ?, status = ?, updated_at = ?, "
                "checked_pixels = NULL, instruction_origin = ? WHERE id = ?",
                [(text, json.dumps(issues, ensure_ascii=False), status_of(issues), now(),
                  "writer" if origin == "writer" else "", pair_id)
                 for pair_id, text, issues in updates])

    def _record(self, updates: list, origin: str) -> None:
        new = {pair_id: text for pair_id, text, _ in updates}
        for start in range(0, len(updates), 500):
            chunk = list(new)[start:start + 500]
            rows = self.db.execute(
                f"SELECT id, project_id, instruction, instruction_origin FROM pairs WHERE id IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchall()
            self.db.conn.executemany(
                "INSERT INTO instruction_history (project_id, pair_id, previous, previous_origin, "
                "new, origin, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(pid, pair_id, old or "", old_origin or "", new[pair_id], origin, now())
                 for pair_id, pid, old, old_origin in rows if (old or "") != new[pair_id]])

    def history(self, project: str, pair_id: int) -> list[dict[str, Any]]:
        """A pair's instruction changes, newest first."""
        with self._lock:
            return self.db.execute_returning_dicts(
                "SELECT * FROM instruction_history WHERE project_id = ? AND pair_id = ? "
                "ORDER BY id DESC", [self.project_id(project), pair_id])

    def undo_instruction(self, pair_id: int, issues_of) -> dict[str, Any] | None:
        """Put back the text a pair's last instruction change replaced (with its origin) and
        forget that change; `issues_of(pair row with the old text)` re-checks it. Returns the
        undone change, or None when there is none."""
        with self.store.write():
            rows = self.db.execute_returning_dicts(
                "SELECT * FROM instruction_history WHERE pair_id = ? ORDER BY id DESC LIMIT 1",
                [pair_id])
            if not rows:
                return None
            change = rows[0]
            pair = _decode(next(self.db["pairs"].rows_where("id = ?", [pair_id])))
            issues = issues_of({**pair, "instruction": change["previous"]})
            self.db.execute(
                "UPDATE pairs SET instruction = ?, instruction_origin = ?, issues = ?, status = ?, "
                "updated_at = ?, checked_pixels = NULL WHERE id = ?",
                [change["previous"], change["previous_origin"], json.dumps(issues, ensure_ascii=False),
                 status_of(issues), now(), pair_id])
            self.db.execute("DELETE FROM instruction_history WHERE id = ?", [change["id"]])
        return change

    def set_issues(self, updates: Iterable[tuple[int, list[dict[str, str]]]],
                   checked_pixels: int | None = None) -> None:
        """`checked_pixels`: the max_pixels these issues are every check's at (files and
        duplicates included); None where they are not, so a launch checks the pairs again."""
        with self.store.write():
            self.db.conn.executemany(
                "UPDATE pairs SET issues = ?, status = ?, checked_pixels = ? WHERE id = ?",
                [(json.dumps(issues, ensure_ascii=False), status_of(issues), checked_pixels, pair_id)
                 for pair_id, issues in updates])

    def set_checked(self, pair_ids: Iterable[int], max_pixels: int | None) -> None:
        """Pairs whose stored issues a full check at `max_pixels` found right (None: pairs
        to check again)."""
        pair_ids = list(pair_ids)
        with self.store.write():
            for start in range(0, len(pair_ids), 500):
                chunk = pair_ids[start:start + 500]
                self.db.execute(f"UPDATE pairs SET checked_pixels = ? WHERE id IN "
                                f"({','.join('?' * len(chunk))})", [max_pixels, *chunk])

    def set_split(self, project: str, pair_ids: list[int], split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        with self.store.write():
            pid = self.project_id(project)
            marks = ",".join("?" * len(pair_ids))
            cursor = self.db.execute(
                f"UPDATE pairs SET split = ?, updated_at = ? WHERE project_id = ? AND id IN ({marks})",
                [split, now(), pid, *pair_ids])
            return cursor.rowcount

    def delete(self, project: str, pair_ids: list[int]) -> int:
        """Delete pairs, and the image files no other pair of the project uses (images are
        content-addressed, so pairs may share them). Under the store lock, so no pair can
        start using a file between the check and its removal."""
        marks = ",".join("?" * len(pair_ids))
        with self._lock:
            with self.store.write():
                pid = self.project_id(project)
                files = _image_files(self.db.execute(
                    f"SELECT source_path, target_path, extra_sources FROM pairs "
                    f"WHERE project_id = ? AND id IN ({marks})", [pid, *pair_ids]))
                for table in ("instruction_history", "instruction_proposals"):
                    self.db.execute(f"DELETE FROM {table} WHERE project_id = ? AND pair_id IN "
                                    f"({marks})", [pid, *pair_ids])
                cursor = self.db.execute(
                    f"DELETE FROM pairs WHERE project_id = ? AND id IN ({marks})", [pid, *pair_ids])
                unused = files - _image_files(self.db.execute(
                    "SELECT source_path, target_path, extra_sources FROM pairs WHERE project_id = ?",
                    [pid])) if files else set()
            for relative in unused:
                if relative.startswith("images/") and ".." not in relative.split("/"):
                    self.path(project, relative).unlink(missing_ok=True)
            return cursor.rowcount

    # -- reading ------------------------------------------------------------
    def _where(self, pid: int, search: str | None, split: str | None,
               status: str | None) -> tuple[str, list[Any]]:
        clauses, params = ["project_id = ?"], [pid]
        if search:
            clauses.append("instruction LIKE ? ESCAPE '\\'")
            params.append(_like(search))
        if split:
            clauses.append("split = ?")
            params.append(split)
        if status:
            clauses.append("status = ?")
            params.append(status)
        return " AND ".join(clauses), params

    def page(self, project: str, page: int = 0, page_size: int = 50, search: str | None = None,
             split: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """One page of pairs, oldest first; `search` matches instructions (case-insensitive)."""
        where, params = self._where(self.project_id(project), search, split, status)
        with self._lock:
            rows = self.db.execute_returning_dicts(
                f"SELECT * FROM pairs WHERE id IN (SELECT id FROM pairs WHERE {where} "
                f"ORDER BY id LIMIT ? OFFSET ?) ORDER BY id",
                [*params, int(page_size), max(0, int(page)) * int(page_size)])
        return [_decode(row) for row in rows]

    def count(self, project: str, search: str | None = None, split: str | None = None,
              status: str | None = None) -> int:
        where, params = self._where(self.project_id(project), search, split, status)
        with self._lock:
            return self.db.execute(f"SELECT count(*) FROM pairs WHERE {where}", params).fetchone()[0]

    def counts(self, project: str) -> dict[str, int]:
        """Pairs per status and per split, for summaries."""
        pid = self.project_id(project)
        out = {"total": 0, "ok": 0, "warning": 0, "error": 0, "train": 0, "validation": 0}
        with self._lock:
            for column in ("status", "split"):
                for value, n in self.db.execute(
                        f"SELECT {column}, count(*) FROM pairs WHERE project_id = ? GROUP BY 1", [pid]):
                    out[value] = n
        out["total"] = out["train"] + out["validation"]
        return out

    def get(self, project: str, pair_id: int) -> dict[str, Any] | None:
        pid = self.project_id(project)
        with self._lock:
            rows = list(self.db["pairs"].rows_where("project_id = ? AND id = ?", [pid, pair_id]))
        return _decode(rows[0]) if rows else None

    def find(self, project: str, sample_id: str) -> dict[str, Any] | None:
        pid = self.project_id(project)
        with self._lock:
            rows = list(self.db["pairs"].rows_where("project_id = ? AND sample_id = ?", [pid, sample_id]))
        return _decode(rows[0]) if rows else None

    def require(self, project: str, pair_id: int) -> dict[str, Any]:
        pair = self.get(project, pair_id)
        if pair is None:
            raise NotFoundError(f"project {project!r} has no pair with id {pair_id}")
        return pair

    def iterate(self, project: str, batch: int = 1000, split: str | None = None,
                search: str | None = None, columns: list[str] | None = None,
                not_checked_at: int | None = None) -> Iterator[dict[str, Any]]:
        """Every pair (or those page() would find), in id order, read in keyset batches
        (constant memory). `columns`: only these (and id); `not_checked_at`: only the pairs
        whose issues were not fully checked at that max_pixels since they last changed."""
        last = 0
        while rows := self.batch_after(project, last, batch, split, search, columns, not_checked_at):
            yield from rows
            last = rows[-1]["id"]

    def batch_after(self, project: str, last: int, batch: int = 1000, split: str | None = None,
                    search: str | None = None, columns: list[str] | None = None,
                    not_checked_at: int | None = None) -> list[dict[str, Any]]:
        """The next `batch` pairs with ids above `last`, in id order (see iterate)."""
        where, params = self._where(self.project_id(project), search, split, None)
        if not_checked_at is not None:
            where += " AND checked_pixels IS NOT ?"
            params.append(int(not_checked_at))
        if columns:
            known = set(self.db["pairs"].columns_dict)
            if not set(columns) <= known:  # names go into the SQL text: only real columns
                raise ValueError(f"not columns of pairs: {sorted(set(columns) - known)}")
        selected = ", ".join(["id", *(c for c in columns if c != "id")]) if columns else "*"
        with self._lock:
            rows = self.db.execute_returning_dicts(
                f"SELECT {selected} FROM pairs WHERE {where} AND id > ? ORDER BY id LIMIT ?",
                [*params, last, batch])
        return [_decode(row) for row in rows]

    def image_paths(self, project: str, batch: int = 10000) -> Iterator[tuple[int, list[str]]]:
        """(pair id, its image paths: source, target, extra sources) of every pair; plain
        tuples in keyset batches, as this runs over every pair at each launch."""
        pid, last = self.project_id(project), 0
        while True:
            with self._lock:
                rows = self.db.execute(
                    "SELECT id, source_path, target_path, extra_sources FROM pairs "
                    "WHERE project_id = ? AND id > ? ORDER BY id LIMIT ?", [pid, last, batch]).fetchall()
            if not rows:
                return
            for pair_id, source, target, extras in rows:
                yield pair_id, [source, target, *(json.loads(extras) if extras and extras != "[]" else [])]
            last = rows[-1][0]

    def stored_issues(self, project: str, status: str) -> list[dict[str, Any]]:
        """{id, sample_id, issues} of the pairs whose stored status is `status`."""
        pid = self.project_id(project)
        with self._lock:
            rows = self.db.execute_returning_dicts(
                "SELECT id, sample_id, issues FROM pairs WHERE project_id = ? AND status = ? "
                "ORDER BY id", [pid, status])
        return [_decode(row) for row in rows]

    def shared_instructions(self, project: str, min_pairs: int,
                            per_group: int) -> list[tuple[str, int, list[dict[str, Any]]]]:
        """Instructions of at least `min_pairs` pairs: (text, pair count, up to `per_group`
        of its pairs' {id, sample_id, source_path, target_path}), for the repetition check."""
        pid = self.project_id(project)
        with self._lock:
            groups = self.db.execute(
                "SELECT instruction, count(*) FROM pairs WHERE project_id = ? AND instruction != '' "
                "GROUP BY instruction HAVING count(*) >= ?", [pid, int(min_pairs)]).fetchall()
            return [(text, n, self.db.execute_returning_dicts(
                "SELECT id, sample_id, source_path, target_path FROM pairs WHERE project_id = ? "
                "AND instruction = ? ORDER BY id LIMIT ?", [pid, text, int(per_group)]))
                for text, n in groups]

    def ids_with_instruction(self, project: str, text: str) -> list[int]:
        with self._lock:
            return [r[0] for r in self.db.execute(
                "SELECT id FROM pairs WHERE project_id = ? AND instruction = ? ORDER BY id",
                [self.project_id(project), text])]

    def duplicate_groups(self, project: str) -> list[list[tuple[int, str]]]:
        """Pairs sharing the same source and target images, as [(id, sample_id), …] groups."""
        pid = self.project_id(project)
        with self._lock:
            # Grouping only the pairs whose source is shared: that subquery is a scan of the
            # (project_id, source_hash) index, where grouping every row sorts the table
            # (1 s at 100,000 pairs, against 0.07).
            rows = self.db.execute(
                "SELECT group_concat(id, '|'), group_concat(sample_id, '|') FROM pairs "
                "WHERE project_id = ? AND source_hash IN (SELECT source_hash FROM pairs "
                "WHERE project_id = ? GROUP BY source_hash HAVING count(*) > 1) "
                "GROUP BY source_hash, target_hash, extra_sources HAVING count(*) > 1",
                [pid, pid]).fetchall()
        return [list(zip(map(int, ids.split("|")), names.split("|"))) for ids, names in rows]
