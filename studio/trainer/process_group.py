"""A run's processes: the supervisor leads a process group, and no process of a run may
outlive the process that started it. No torch here: the supervisor and the studio use it.

    supervisor (group leader, child subreaper)
      └ accelerate launch          dies with the supervisor: SIGTERM (set before exec)
          └ python -m studio.trainer   dies with its launcher: SIGTERM (die_with_parent)

SIGTERM, not SIGKILL, on both: a supervisor only dies by SIGKILL or a crash (it ignores
TERM/INT), and what follows is then what Stop does: torch's elastic agent stops its workers
in order, the trainer finishes its step, saves a resume state and exits within a step. The
processes stay in the group meanwhile, so the run counts as alive until they are gone.
Parent-death signals exist on Linux only; elsewhere these helpers do nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Callable

# Set by the supervisor for what it starts: its pid, which is also the run's group id.
SUPERVISOR_ENV = "STUDIO_RUN_SUPERVISOR"
DEATH_SIGNAL = signal.SIGTERM
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def members(pgid: int) -> list[int]:
    """The live (not zombie) processes of group `pgid`, this one excepted ([] without /proc)."""
    found = []
    for entry in Path("/proc").iterdir() if os.path.isdir("/proc") else ():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp
                found.append(int(entry.name))
    return found


def alive(pgid: int | None) -> bool:
    """Whether any process of the group lives: a run is alive as long as one of its
    processes is, whichever pid is gone."""
    if not pgid:
        return False
    if os.path.isdir("/proc"):
        return bool(members(pgid))
    try:  # no /proc: a signal 0 to the group (zombies count)
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prctl(option: int, value: int) -> bool:
    return _libc is not None and _libc.prctl(option, value, 0, 0, 0) == 0


def become_subreaper() -> bool:
    """Orphaned descendants (a trainer whose launcher died, torch's workers in their own
    sessions) become this process's children, so it can wait for every one of them."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def dies_with_this_process() -> Callable[[], None]:
    """A Popen preexec_fn: the child gets DEATH_SIGNAL when this process dies."""
    parent = os.getpid()

    def preexec() -> None:
        # Our own handler (copied by fork) would swallow the signal until the exec.
        signal.signal(DEATH_SIGNAL, signal.SIG_DFL)
        if _prctl(_PR_SET_PDEATHSIG, DEATH_SIGNAL) and os.getppid() != parent:
            os.kill(os.getpid(), DEATH_SIGNAL)  # it died before the prctl: nobody will signal

    return preexec


def die_with_parent() -> None:
    """In a trainer the supervisor started: DEATH_SIGNAL when its launcher dies. Call it
    first thing, before the trainer installs its own SIGTERM handler."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor and _prctl(_PR_SET_PDEATHSIG, DEATH_SIGNAL) and not _launched_by(int(supervisor)):
        os.kill(os.getpid(), DEATH_SIGNAL)  # the launcher died before the prctl


def _launched_by(supervisor: int) -> bool:
    """Whether our parent is still the launcher: a process of the supervisor's group other
    than the supervisor (a dead launcher's children go to the supervisor or to init)."""
    parent = os.getppid()
    try:
        return parent != supervisor and os.getpgid(parent) == os.getpgid(supervisor)
    except ProcessLookupError:
        return False
