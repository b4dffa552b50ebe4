"""Pairing files by name: which file is a source, which a target, and of which pair.

Recognised: `source_<id>` / `edited_<id>` (the recipe's names), `<id>_source` / `<id>_target`,
`before` / `after`, `input` / `output` and similar words as prefix or suffix, and role
folders (`source/<id>.jpg` with `target/<id>.jpg`, ai-toolkit's `control/` with its
targets, `control_2/` and `control_3/` for extra inputs). Matching ignores case.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
TEXT_EXTENSIONS = {".txt", ".caption"}
TABLE_EXTENSIONS = {".csv", ".json", ".jsonl"}

_SOURCE = "source|src|input|before|original|orig|control|in"
_TARGET = "edited|edit|target|tgt|output|after|result|out"
_PREFIX = re.compile(rf"^(?P<role>{_SOURCE}|{_TARGET})[_\-. ](?P<id>.+)$", re.I)
_SUFFIX = re.compile(rf"^(?P<id>.+?)[_\-. ](?P<role>{_SOURCE}|{_TARGET})$", re.I)
_FOLDER = re.compile(rf"^(?P<role>{_SOURCE}|{_TARGET})(?:s|es)?(?:[_\-]?(?P<n>[23]))?$", re.I)
_TEXT_PREFIX = re.compile(r"^(?:instruction|prompt|caption)[_\-. ](?P<id>.+)$", re.I)
_SOURCE_WORDS = set(_SOURCE.split("|"))


@dataclass(frozen=True)
class Named:
    key: str    # pairs files: "<folder>/<id>"
    id: str     # the bare id, used as the sample_id and for instruction tables
    role: str   # "source", "target", "source2", "source3" or "text"


def _role(word: str) -> str:
    return "source" if word.lower() in _SOURCE_WORDS else "target"


def parse_name(name: str) -> Named | None:
    """How a file takes part in a pair, from its relative path; None if it does not."""
    folder, base = posixpath.split(name)
    stem, ext = posixpath.splitext(base)
    ext = ext.lower()
    if ext not in IMAGE_EXTENSIONS | TEXT_EXTENSIONS:
        return None
    parent, folder_name = posixpath.split(folder)
    folder_role = _FOLDER.match(folder_name)
    for pattern in (_PREFIX, _SUFFIX):
        match = pattern.match(stem)
        if match:
            role = "text" if ext in TEXT_EXTENSIONS else _role(match["role"])
            return Named(f"{folder}/{match['id']}", match["id"], role)
    if ext in TEXT_EXTENSIONS:
        match = _TEXT_PREFIX.match(stem)
        stem = match["id"] if match else stem
        return Named(f"{parent if folder_role else folder}/{stem}", stem, "text")
    if folder_role:
        role = _role(folder_role["role"])
        if folder_role["n"] and role == "source":
            role += folder_role["n"]
        return Named(f"{parent}/{stem}", stem, role)
    return None
