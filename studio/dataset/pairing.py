"""Candidates from a set of files (a folder, a zip, uploads): metadata files first, then names.

Instructions come from `.txt` sidecars or from a CSV/JSON/JSONL table keyed by id or file
name. Every file that ends up in no pair is listed as unmatched, never dropped silently.
"""
from __future__ import annotations

import posixpath

from .metadata import ID_KEYS, PROMPT_KEYS, first_key, is_pair_metadata, metadata_candidates, read_records
from .naming import TABLE_EXTENSIONS, parse_name
from .report import ImportReport
from .sources import Candidate, FileSet, UnreadableFile

_TABLE_FILE_KEYS = ("file", "filename", "file_name", "name", "image", "target", "source", "edit_image")


def _instruction_table(records: list[tuple[str, dict]], name: str, report: ImportReport) -> dict[str, str]:
    first = records[0][1] if records else {}
    key, text = first_key(first, ID_KEYS + _TABLE_FILE_KEYS), first_key(first, PROMPT_KEYS)
    if not key or not text:
        raise ValueError(f"{name}: an instruction table needs an id or file column "
                         f"({', '.join(ID_KEYS + _TABLE_FILE_KEYS)}) and an instruction column "
                         f"({', '.join(PROMPT_KEYS)}); found {', '.join(first) or 'nothing'}")
    table = {}
    for label, record in records:
        value = str(record.get(first_key(record, ID_KEYS + _TABLE_FILE_KEYS) or key) or "")
        named = parse_name(value)
        table[named.id if named else posixpath.splitext(posixpath.basename(value))[0]] = str(record.get(text) or "")
    return table


def fileset_candidates(files: FileSet, report: ImportReport) -> list[Candidate]:
    claimed: set[str] = set()
    candidates: list[Candidate] = []
    instructions: dict[str, str] = {}
    for name in files.names:
        if posixpath.splitext(name)[1].lower() not in TABLE_EXTENSIONS:
            continue
        claimed.add(name)
        try:
            records = read_records(files, name, report)
        except UnreadableFile as exc:  # e.g. a corrupt zip member: the other files still pair
            report.error(name, f"cannot be read ({exc})")
            continue
        if is_pair_metadata(records):
            candidates += metadata_candidates(files, name, report, claimed, records)
        else:
            instructions.update(_instruction_table(records, name, report))

    groups: dict[str, dict[str, str]] = {}
    texts: dict[str, str] = {}
    for name in files.names:
        if name in claimed:
            continue
        named = parse_name(name)
        if named is None:
            report.unmatched.append(f"{name} (not a recognised source/target name)")
        elif named.role == "text":
            texts[named.key] = name
        elif named.role in groups.setdefault(named.key, {"id": named.id}):
            report.unmatched.append(f"{name} (another file is already the {named.role} of {named.id})")
        else:
            groups[named.key][named.role] = name

    for key, roles in groups.items():
        if "source" not in roles or "target" not in roles:
            missing = "target" if "source" in roles else "source"
            report.unmatched += [f"{roles[r]} (no {missing} for {roles['id']})"
                                 for r in roles if r != "id"]
            continue
        text_file = texts.pop(key, None)
        try:
            instruction = (files.read(text_file).decode("utf-8-sig").strip() if text_file
                           else instructions.get(roles["id"], ""))
        except UnreadableFile as exc:  # not imported without it: the pair would train on ""
            report.error(f"pair {roles['id']}", f"{text_file}: cannot be read ({exc})")
            continue
        extras = [files.ref(roles[r]) for r in ("source2", "source3") if r in roles]
        candidates.append(Candidate(
            row=f"pair {roles['id']}", source=files.ref(roles["source"]), target=files.ref(roles["target"]),
            extra_sources=extras, instruction=instruction, sample_id=roles["id"],
            meta={"origin": f"{files.label}:{roles['target']}"}))
    report.unmatched += [f"{name} (instruction file with no pair)" for name in texts.values()]
    return candidates
