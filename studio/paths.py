"""Where the studio keeps its data: one projects folder holding the store and each project."""
from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from contextlib import contextmanager
from pathlib import Path

PROJECTS_ENV = "STUDIO_PROJECTS_DIR"
DEFAULT_PROJECTS_DIR = "projects"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def projects_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The projects folder: the explicit value, else $STUDIO_PROJECTS_DIR, else ./projects."""
    value = explicit or os.environ.get(PROJECTS_ENV) or DEFAULT_PROJECTS_DIR
    path = Path(value).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_project_name(name: str) -> str:
    """Project names become folder names, so they may not hold separators or start with a dot."""
    if not _NAME_RE.match(name or ""):
        raise ValueError(
            f"invalid project name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# Letters and digits of any script (and their combining marks) read as they are; the rest
# (separators, punctuation, control characters) could break a file name somewhere.
_KEPT_CATEGORIES = ("L", "M", "N")
_ID_MAX_BYTES = 120  # UTF-8 bytes: room for "source_" + ".jpg" under the 255-byte file-name limit


def safe_stem(text: str | None) -> str:
    """A file-name stem from free text: NFC (macOS writes names decomposed), letters, digits,
    '.', '-' and '_' of any script kept, every other run of characters one '_'. May be ''."""
    text = unicodedata.normalize("NFC", str(text or ""))
    kept = "".join(c if c in "._-" or unicodedata.category(c)[0] in _KEPT_CATEGORIES else "\0"
                   for c in text)
    stem = re.sub("\0+", "_", kept).strip("._-")
    while len(stem.encode()) > _ID_MAX_BYTES:
        stem = stem[:-1]
    return stem.rstrip("._-")


def demo_model_dir(projects: Path) -> Path:
    """The embedded demo model is built once per projects folder, here."""
    return projects / "_models" / "demo"


def file_mode() -> int:
    """The mode an ordinary new file gets under the current umask."""
    try:  # Linux shows the umask; setting it to read it would race other threads' files
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask



@contextmanager
def replacing(path: Path):
    """Yields a temporary path beside `path` to write; once written, it gets an ordinary file's
    mode (mkstemp makes 0600 files) and replaces `path` whole, so readers never see half a
    file. A kill leaves at most a `.NAME.*.tmp` behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
