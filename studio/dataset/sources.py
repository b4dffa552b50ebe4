"""What importers produce: candidate pairs whose images are read lazily, and file sets.

A file set (a folder, a zip, a list of uploaded files) is a mapping of POSIX relative
names to readers, so pairing and metadata code never touches the file system directly,
and nothing in a zip is ever extracted. A metadata file's references resolve only to
files of its own set: an upload's table can never name a file elsewhere on the server.
"""
from __future__ import annotations

import lzma
import posixpath
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

MAX_MEMBER_BYTES = 256 * 1024 * 1024
# A zip may inflate to this much plus RATIO times its own size in all. Images barely
# compress, so a real dataset of any size stays far below it and only a zip bomb comes near.
ZIP_INFLATE_ALLOWANCE = 64 * 1024 * 1024
ZIP_INFLATE_RATIO = 20
# What reading a zip member raises when its data is corrupt or in a form zipfile cannot read.
_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
                  NotImplementedError, RuntimeError)


class UnreadableFile(ValueError):
    """One file of a set cannot be read (corrupt, or over a size limit); the message says why."""


@dataclass
class ImageRef:
    name: str                      # shown in messages: a file name, or "row 12 source_image"
    read: Callable[[], bytes]


@dataclass
class Candidate:
    row: str                       # where it came from, for reports ("row 12", "pair 0001")
    source: ImageRef
    target: ImageRef
    instruction: str
    extra_sources: list[ImageRef] = field(default_factory=list)
    sample_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def bytes_ref(name: str, data: bytes) -> ImageRef:
    return ImageRef(name, lambda: data)


def path_ref(path: str | Path, name: str | None = None) -> ImageRef:
    path = Path(path)
    return ImageRef(name or path.name, path.read_bytes)


class FileSet:
    """Named files: `names` in a stable order, `read(name)`, `label` for messages, and
    `absent`: what a reference that resolves to none of them is told. It is the same
    whether or not such a path exists somewhere, so a message never reveals that."""

    absent = "file not found"

    def __init__(self, label: str):
        self.label = label
        self.names: list[str] = []

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def ref(self, name: str) -> ImageRef:
        return ImageRef(name, lambda: self.read(name))

    def resolve(self, base: str, reference: str) -> str | None:
        """A metadata file's reference, relative to its folder, as a name in this set."""
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(base), reference.replace("\\", "/")))
        return joined if joined in self._index else None

    @property
    def _index(self) -> set[str]:
        if not hasattr(self, "_names_set"):
            self._names_set = set(self.names)
        return self._names_set


class FolderFiles(FileSet):
    """Files on disk. Metadata may name files under the folder; with `local_paths` (the CLI,
    whose user reads their own files) any local file, absolute paths and `..` included."""

    def __init__(self, root: str | Path, names: list[str] | None = None, local_paths: bool = False):
        self.root = Path(root)
        super().__init__(str(self.root))
        if names is None:
            names = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                           if p.is_file() and not _hidden(p.relative_to(self.root).as_posix()))
        self.names = names
        self.local_paths = local_paths

    @property
    def absent(self) -> str:
        return "file not found" if self.local_paths else f"not found in {self.root}"

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def resolve(self, base: str, reference: str) -> str | None:
        found = super().resolve(base, reference)
        if found:
            return found
        # Not listed (a metadata file's folder is not scanned): looked up on disk.
        path = self.root / posixpath.dirname(base) / reference  # an absolute reference wins
        if not (self.local_paths or path.resolve().is_relative_to(self.root.resolve())):
            return None
        if path.is_file():
            self.names.append(str(path))
            self._index.add(str(path))
            return str(path)
        return None


class ListFiles(FileSet):
    """Uploaded files: known by base name (uploads arrive in separate temporary folders)."""

    absent = "not among the uploaded files"

    def __init__(self, paths: list[str | Path]):
        super().__init__("uploaded files")
        self.paths: dict[str, Path] = {}
        for path in map(Path, paths):
            self.paths.setdefault(path.name, path)
        self.names = sorted(self.paths)

    def read(self, name: str) -> bytes:
        return self.paths[name].read_bytes()

    def resolve(self, base: str, reference: str) -> str | None:
        # Uploads lose their folders, so a metadata file's `images/x.jpg` is matched as `x.jpg`.
        name = posixpath.basename(reference.replace("\\", "/"))
        return name if name in self.paths else None


class ZipFiles(FileSet):
    """A zip read in place. Entries with absolute paths or `..` make the whole zip refused,
    and so does a zip that says it inflates to more than `max_total` (by default
    ZIP_INFLATE_ALLOWANCE plus ZIP_INFLATE_RATIO times its size). The sizes a zip states
    can lie, so reads are bounded by what they actually inflate: each member to
    `max_member` bytes, and all reads together (a table may name one member many times)
    to `max_total`."""

    absent = "not in the zip"

    def __init__(self, path: str | Path, max_member: int = MAX_MEMBER_BYTES, max_total: int | None = None):
        super().__init__(str(path))
        try:
            self.zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise ValueError(f"{path}: not a zip file") from None
        size = Path(path).stat().st_size
        self.max_member = max_member
        self.max_total = ZIP_INFLATE_ALLOWANCE + ZIP_INFLATE_RATIO * size if max_total is None else max_total
        self.inflated = 0
        self._lock = threading.Lock()  # the import reads members from several threads
        for info in self.zip.infolist():
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
                raise ValueError(f"{path}: refused, entry {name!r} points outside the archive")
            if not info.is_dir() and not _hidden(name):
                self.names.append(name)
        self.names.sort()
        stated = sum(info.file_size for info in self.zip.infolist())
        if stated > self.max_total:
            raise ValueError(f"{path}: refused, its members inflate to {stated:,} bytes, over the "
                             f"limit of {self.max_total:,} bytes for a zip of {size:,} bytes")

    def read(self, name: str) -> bytes:
        self._count(0)  # once the total is spent, nothing more is inflated
        try:
            with self.zip.open(name) as member:
                data = member.read(self.max_member + 1)  # never more, whatever the header says
        except _MEMBER_ERRORS as exc:
            raise UnreadableFile(f"corrupt or unsupported zip member ({exc})") from None
        if len(data) > self.max_member:
            raise UnreadableFile(f"inflates past the {self.max_member:,}-byte limit for one zip member")
        self._count(len(data))
        return data

    def _count(self, size: int) -> None:
        with self._lock:
            self.inflated += size
            if self.inflated > self.max_total:
                raise UnreadableFile(f"not read: the zip's members inflated to {self.inflated:,} bytes "
                                     f"in all, over the limit of {self.max_total:,} bytes")


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))
