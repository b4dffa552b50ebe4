"""Fault points, so that tests can land a kill (or a broken disk) inside an exact window.

`point(name, step)` does nothing unless $STUDIO_FAULT_AT names it, as `name` or `name:step`.
Then it writes the name to $STUDIO_FAULT_MARKER (if set) and, by default, SIGKILLs its own
process; with STUDIO_FAULT_ACTION=pause it waits instead until the marker is deleted, so that
a test can kill the supervisor, or break the output folder, while the trainer sits there. A
stop signal that arrives meanwhile goes to the trainer's own handler as usual, and is acted
on once the test lets go.

STUDIO_FAULT_ACTION=pause-until-stop waits the same way, but a stop signal (SIGTERM, SIGINT)
also ends the wait, after the trainer's own handler has taken it. It is for a stop that the
test does not send itself: accelerate's launcher relays a supervisor's death or the studio's
Stop as its own SIGTERM, at a moment no test sees, and SIGKILLs the trainer a few seconds
later, so a test that had to notice the signal before releasing the trainer would race with
that grace period.

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
PAUSE, PAUSE_UNTIL_STOP = "pause", "pause-until-stop"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def point(name: str, step: int | None = None) -> None:
    if os.environ.get(AT) not in (name, f"{name}:{step}"):
        return
    marker = os.environ.get(MARKER)
    if marker:
        Path(marker).write_text(name)
    action = os.environ.get(ACTION)
    if action in (PAUSE, PAUSE_UNTIL_STOP) and marker:
        _pause(marker, until_stop=action == PAUSE_UNTIL_STOP)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _pause(marker: str, until_stop: bool) -> None:
    """Wait until the marker is gone (or, `until_stop`, a stop signal came). Fault points are
    in the main thread, where signal handlers can be set."""
    asked: list[int] = []
    own = {sig: signal.getsignal(sig) for sig in (STOP_SIGNALS if until_stop else ())}

    def noted(signum, frame):
        handler = own[signum]
        if handler == signal.SIG_IGN:
            return
        asked.append(signum)
        if callable(handler):  # the trainer's stop flag: it sees the signal as always
            handler(signum, frame)
        else:  # SIG_DFL
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in own:
        signal.signal(sig, noted)
    try:
        while os.path.exists(marker) and not asked:
            time.sleep(0.05)
    finally:
        for sig, handler in own.items():
            if signal.getsignal(sig) is noted:  # unless the handler changed it (a second ^C)
                signal.signal(sig, handler)


def free_bytes(path: Path) -> int:
    faked = os.environ.get(FREE_MB)
    return int(float(faked) * 2**20) if faked else shutil.disk_usage(path).free
