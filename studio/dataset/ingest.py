"""Turning candidate pairs into stored pairs: check each image, store it once, insert rows.

Rows are committed in batches, so an import that fails half-way keeps what it stored,
and a bad row is reported (by row and reason) without stopping the others.

Running an import again is safe, also after a crash or alongside other imports into the
same project: a row whose pair_key (its images and instruction) is stored already is
skipped, and images are named by their content hash, so image files left behind by an
import that died before inserting its rows are the very files a re-run would write;
it finds them in place and its rows use them.
"""
from __future__ import annotations

import hashlib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from ..store.pairs import status_of
from ..paths import safe_stem
from ..store import Store
from .checks import DEFAULT_MAX_PIXELS, issue, pair_issues
from .images import BadImage, PreparedImage, prepare_image, store_image
from .report import ImportReport
from .sources import Candidate, ImageRef

MAX_INPUT_IMAGES = 3  # Qwen-Image-Edit-2509/2511 take up to three input images
WORKERS = min(4, os.cpu_count() or 1)
WINDOW = 16 * WORKERS
Progress = Callable[[int, int | None], None]


def pair_key(source: str, extras: list[str], target: str, instruction: str) -> str:
    return hashlib.sha256("|".join([source, *extras, target, instruction]).encode()).hexdigest()


def _prepare(ref: ImageRef) -> PreparedImage:
    try:
        data = ref.read()
    except (OSError, KeyError, ValueError) as exc:
        raise BadImage(f"{ref.name}: cannot be read ({exc})") from None
    return prepare_image(data, ref.name)


def build_row(store: Store, project: str, candidate: Candidate,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Check and store one candidate's images; returns the pair row (not yet inserted)."""
    if len(candidate.extra_sources) > MAX_INPUT_IMAGES - 1:
        raise BadImage(f"{1 + len(candidate.extra_sources)} input images; at most {MAX_INPUT_IMAGES}")
    source, target = _prepare(candidate.source), _prepare(candidate.target)
    extras = [_prepare(ref) for ref in candidate.extra_sources]
    folder = store.project_dir(project)
    instruction = candidate.instruction or ""
    key = pair_key(source.hash, [e.hash for e in extras], target.hash, instruction)
    notes = [note for image in (source, *extras, target) for note in image.notes]
    row = {
        "sample_id": safe_sample_id(candidate.sample_id, key[:12]),
        "source_path": store_image(folder, source), "target_path": store_image(folder, target),
        "extra_sources": [store_image(folder, e) for e in extras],
        "instruction": instruction, "split": "train",
        "source_hash": source.hash, "target_hash": target.hash, "pair_key": key,
        "source_width": source.width, "source_height": source.height,
        "target_width": target.width, "target_height": target.height,
        "meta": {**candidate.meta, **({"notes": notes} if notes else {})},
    }
    row["issues"] = pair_issues(row, max_pixels)
    row["status"] = status_of(row["issues"])
    # Its files were just stored and duplicates are marked after the batch: a full check at
    # this max_pixels, so a launch at it checks the pair no more.
    row["checked_pixels"] = max_pixels
    return row


def safe_sample_id(hint: str | None, fallback: str) -> str:
    """sample_ids become file names on export: a safe, still readable stem of the hint."""
    return safe_stem(hint) or fallback


def renamed(wanted: str, stored: str) -> str:
    """Why a pair's sample id is not the one its data named: two names never become one id
    unnoticed."""
    cleaned = safe_sample_id(wanted, "")
    why = []
    if cleaned != wanted:
        why.append("characters a file name cannot hold became '_'" if cleaned
                   else "it has no letter or digit to keep")
    if cleaned and cleaned != stored:
        why.append(f"{cleaned!r} was taken")
    return f"sample id {wanted!r} is stored as {stored!r} ({'; '.join(why)})"


def drop_vanished(store: Store, project: str, inserted: list[dict], rows_of: dict[str, str],
                  report: ImportReport) -> list[dict]:
    """An image stored once already is reused, not rewritten; deleting the last pair that
    used it removes the file. If that happened between reuse and insert, the new pair would
    point at nothing: take it out again and report the row."""
    folder = store.project_dir(project)
    gone = [row for row in inserted
            if not all((folder / p).is_file()
                       for p in (row["source_path"], row["target_path"], *row["extra_sources"]))]
    if gone:
        store.pairs.delete(project, [row["id"] for row in gone])
        for row in gone:
            report.error(rows_of[row["pair_key"]], "an image was deleted (with the last pair "
                                                   "using it) while importing; import it again")
    gone_ids = {row["id"] for row in gone}
    return [row for row in inserted if row["id"] not in gone_ids]


def ingest(store: Store, project: str, candidates: Iterable[Candidate], report: ImportReport,
           total: int | None = None, progress: Progress | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 200) -> ImportReport:
    pairs = store.pairs
    pairs.project_id(project)  # fail before reading anything if the project is missing
    batch: list[dict] = []
    rows_of: dict[str, str] = {}
    asked: dict[str, str] = {}  # pair_key -> the sample id the data named

    def flush() -> None:
        inserted, present = pairs.add(project, batch)
        inserted = drop_vanished(store, project, inserted, rows_of, report)
        report.added += len(inserted)
        report.already_present += present
        for row in inserted:
            wanted = asked.get(row["pair_key"])
            if wanted is not None and wanted != row["sample_id"]:
                report.warnings.append((rows_of[row["pair_key"]], renamed(wanted, row["sample_id"])))
            for problem in row["issues"]:
                if problem["level"] != "info":
                    report.warnings.append((rows_of[row["pair_key"]],
                                            f"{problem['level']}: {problem['message']}"))
        batch.clear()
        rows_of.clear()
        asked.clear()

    def build(candidate: Candidate) -> dict | BadImage:
        try:
            return build_row(store, project, candidate, max_pixels)
        except BadImage as exc:
            return exc

    done = 0
    # Decoding dominates and Pillow releases the GIL while it decodes, so threads help;
    # handing them WINDOW candidates at a time keeps memory bounded.
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ingest") as pool:
        for chunk in _chunks(candidates, WINDOW):
            for candidate, row in zip(chunk, pool.map(build, chunk)):
                if isinstance(row, BadImage):
                    report.error(candidate.row, str(row))
                else:
                    batch.append(row)
                    rows_of.setdefault(row["pair_key"], candidate.row)
                    if candidate.sample_id is not None:
                        asked.setdefault(row["pair_key"], str(candidate.sample_id))
                    if len(batch) >= batch_size:
                        flush()
                done += 1
                if progress:  # rows dropped by a score filter count as looked at
                    progress(done + report.filtered, total)
    if batch:
        flush()
    if report.added:
        mark_duplicates(store, project, max_pixels)
    return report


def _chunks(items: Iterable[Candidate], size: int) -> Iterator[list[Candidate]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def mark_duplicates(store: Store, project: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Warn on every pair that shares both images with another pair; returns how many.
    One transaction, so no concurrent edit of a pair falls between reading it and
    writing its issues back."""
    pairs, updates = store.pairs, []
    with store.write():
        for group in pairs.duplicate_groups(project):
            for pair_id, sample_id in group:
                others = ", ".join(s for i, s in group if i != pair_id)
                row = pairs.require(project, pair_id)
                updates.append((pair_id, pair_issues(row, max_pixels) + [
                    issue("warning", f"duplicate: same source and target images as {others}")]))
        pairs.set_issues(updates, checked_pixels=max_pixels)
    return len(updates)
