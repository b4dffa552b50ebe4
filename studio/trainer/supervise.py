"""`python -m studio.trainer.supervise EXIT_FILE -- COMMAND…`: runs a training command and
writes how it ended to EXIT_FILE.

It leads the run's process group, so the studio can stop the whole group and, after a
studio restart, still learn the exit status (a restarted studio is not the parent and
cannot wait() for it). SIGTERM/SIGINT reach every process of the group; the supervisor
itself only waits until the last of them (e.g. a trainer still saving) has exited.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp
                members.append(int(entry.name))
    return members


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m studio.trainer.supervise EXIT_FILE -- COMMAND…", file=sys.stderr)
        return 2
    exit_file, command = Path(argv[0]), argv[2:]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the group's processes handle it; we keep waiting
    code = subprocess.Popen(command).wait()
    if os.path.isdir("/proc"):
        while _group_members(os.getpgid(0)):
            time.sleep(0.2)
    tmp = exit_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"code": code, "ended_at": time.time()}))
    os.replace(tmp, exit_file)
    return code


if __name__ == "__main__":
    sys.exit(main())
