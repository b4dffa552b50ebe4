"""`python -m studio.jobs.supervise EXIT_FILE -- COMMAND…`: runs a training command and
writes how it ended to EXIT_FILE.

It leads the run's process group, so the studio can stop the whole group and, after a
studio restart, still learn the exit status (a restarted studio is not the parent and
cannot wait() for it). SIGTERM/SIGINT reach every process of the group; the supervisor
itself only waits until the last of its descendants (e.g. a trainer still saving) has
exited. If the supervisor dies, its command gets a parent-death signal (process_group.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..trainer.process_group import SUPERVISOR_ENV, become_subreaper, dies_with_this_process


def _reap_all() -> None:
    """Wait for every child: as a subreaper, that is every descendant, whoever its parent was."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m studio.jobs.supervise EXIT_FILE -- COMMAND…", file=sys.stderr)
        return 2
    exit_file, command = Path(argv[0]), argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the group's processes handle it; we keep waiting
    become_subreaper()
    env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
    code = subprocess.Popen(command, env=env, preexec_fn=dies_with_this_process()).wait()
    _reap_all()
    tmp = exit_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"code": code, "ended_at": time.time()}))
    os.replace(tmp, exit_file)
    return code


if __name__ == "__main__":
    sys.exit(main())
