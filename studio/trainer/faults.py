"""Fault points, so that tests can land a kill (or a broken disk) inside an exact window.

`point(name, step)` does nothing unless $STUDIO_FAULT_AT names it, as `name` or `name:step`.
Then it writes the name to $STUDIO_FAULT_MARKER (if set) and, by default, SIGKILLs its own
process; with STUDIO_FAULT_ACTION=pause it waits instead until the marker is deleted, so that
a test can kill the supervisor, or break the output folder, while the trainer sits there.

$STUDIO_FAULT_FREE_MB stands in for the output disk's free space (the disk-full check).
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

AT, MARKER, ACTION, FREE_MB = ("STUDIO_FAULT_AT", "STUDIO_FAULT_MARKER", "STUDIO_FAULT_ACTION",
                               "STUDIO_FAULT_FREE_MB")


def point(name: str, step: int | None = None) -> None:
    if os.environ.get(AT) not in (name, f"{name}:{step}"):
        return
    marker = os.environ.get(MARKER)
    if marker:
        Path(marker).write_text(name)
    if os.environ.get(ACTION) == "pause" and marker:
        while os.path.exists(marker):
            time.sleep(0.05)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def free_bytes(path: Path) -> int:
    faked = os.environ.get(FREE_MB)
    return int(float(faked) * 2**20) if faked else shutil.disk_usage(path).free
