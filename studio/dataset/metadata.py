"""Importing metadata files: the recipe's metadata_edit.csv and DiffSynth JSON/JSONL.

Column names follow DiffSynth: `image` is the training target, `edit_image` the input
(a list of up to 3 inputs for 2509/2511). A CSV laid out like the seed README's table
(`image` holding source_* files, `edit_image` edited_* files) is detected and swapped.
musubi-tuner's JSONL (image_path, control_path, caption) is read too.
"""
from __future__ import annotations

import csv
import io
import json
import posixpath
from typing import Any

from .naming import parse_name
from .report import ImportReport
from .sources import Candidate, FileSet

TARGET_KEYS = ("image", "target", "target_image", "edited_image", "image_path")
SOURCE_KEYS = ("edit_image", "source", "source_image", "input_image", "control_path")
PROMPT_KEYS = ("prompt", "instruction", "edit_prompt", "caption", "text")
ID_KEYS = ("sample_id", "id", "idx")


def read_records(files: FileSet, name: str, report: ImportReport) -> list[tuple[str, dict]]:
    """(row label, record) for each row of a CSV, JSON list or JSONL file."""
    text = files.read(name).decode("utf-8-sig")
    label = posixpath.basename(name)
    ext = posixpath.splitext(name)[1].lower()
    if ext == ".csv":
        return [(f"{label} row {n}", row) for n, row in enumerate(csv.DictReader(io.StringIO(text)), 1)]
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            data = [{"id": key, "prompt": value} for key, value in data.items()]
        if not isinstance(data, list):
            raise ValueError(f"{name}: expected a list of records")
        return [(f"{label} item {n}", row) for n, row in enumerate(data, 1)]
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"{label} line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            report.error(f"{label} line {n}", f"not valid JSON ({exc.msg})")
    return records


def first_key(record: dict, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in record), None)


def is_pair_metadata(records: list[tuple[str, dict]]) -> bool:
    """Whether records name images (a metadata file) rather than only instructions."""
    return bool(records) and all(isinstance(r, dict) for _, r in records[:5]) and bool(
        first_key(records[0][1], TARGET_KEYS) and _source_keys(records[0][1]))


def _source_keys(record: dict) -> list[str]:
    numbered = sorted(k for k in record if k.startswith("control_path_"))
    return numbered or ([first_key(record, SOURCE_KEYS)] if first_key(record, SOURCE_KEYS) else [])


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value if v]
    text = str(value or "").strip()
    if text.startswith("["):  # a 2509-style list written into a CSV cell
        try:
            return [str(v) for v in json.loads(text) if v]
        except json.JSONDecodeError:
            pass
    return [text] if text else []


def seed_table_layout(records: list[tuple[str, dict]]) -> bool:
    """True when `image` holds source_* files and `edit_image` edited_* files (reversed)."""
    votes = 0
    for _, record in records:
        targets, sources = _as_list(record.get("image")), _as_list(record.get("edit_image"))
        if len(targets) != 1 or len(sources) != 1:
            continue
        t, s = parse_name(targets[0]), parse_name(sources[0])
        if t and s and t.role == "source" and s.role == "target":
            votes += 1
        elif t and s and t.role == "target" and s.role.startswith("source"):
            votes -= 1
    return votes > 0


def metadata_candidates(files: FileSet, name: str, report: ImportReport,
                        claimed: set[str] | None = None,
                        records: list[tuple[str, dict]] | None = None) -> list[Candidate]:
    """Candidates from one metadata file; files it references are added to `claimed`."""
    records = read_records(files, name, report) if records is None else records
    out: list[Candidate] = []
    if not records:
        report.notes.append(f"{name}: no rows")
        return out
    first = records[0][1]
    target_key, source_keys = first_key(first, TARGET_KEYS), _source_keys(first)
    if not target_key or not source_keys:
        raise ValueError(f"{name}: needs a target column ({', '.join(TARGET_KEYS)}) and a "
                         f"source column ({', '.join(SOURCE_KEYS)}); found {', '.join(first)}")
    swap = target_key == "image" and source_keys == ["edit_image"] and seed_table_layout(records)
    if swap:
        report.notes.append(
            f"{posixpath.basename(name)}: `image` holds source_* files and `edit_image` edited_* "
            "files (the seed README's table); swapped them so the edited image is the training "
            "target and the source image the input")
    prompt_key, id_key = first_key(first, PROMPT_KEYS), first_key(first, ID_KEYS)
    for label, record in records:
        targets = _as_list(record.get(target_key))
        sources = [s for key in source_keys for s in _as_list(record.get(key))]
        if swap:
            targets, sources = sources, targets
        if len(targets) != 1 or not sources:
            report.error(label, f"needs one target image and 1-3 source images; found "
                                f"{len(targets)} target(s) and {len(sources)} source(s)")
            continue
        resolved = [files.resolve(name, ref) for ref in [*sources, targets[0]]]
        missing = [ref for ref, found in zip([*sources, targets[0]], resolved) if not found]
        if missing:
            report.error(label, f"{files.absent}: {', '.join(missing)}")
            continue
        if claimed is not None:
            claimed.update(resolved)
        out.append(Candidate(
            row=label, source=files.ref(resolved[0]), target=files.ref(resolved[-1]),
            extra_sources=[files.ref(r) for r in resolved[1:-1]],
            instruction=str(record.get(prompt_key) or "") if prompt_key else "",
            sample_id=str(record[id_key]) if id_key and record.get(id_key) not in (None, "") else
            posixpath.splitext(posixpath.basename(targets[0]))[0].removeprefix("edited_"),
            meta={"origin": label}))
    return out
