"""A run's status as an explicit state machine: the moves allowed, and how a run whose
processes are all gone is settled from what it left behind.

    queued   -> running | stopped (stopped before it started) | failed (could not start)
    running  -> stopping | finished | stopped | failed
    stopping -> stopped | failed
    stopped, finished, failed -> queued (resumed)
"""
from __future__ import annotations

from ..store.runs import ACTIVE, STATUSES

MOVES: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "stopped", "failed"}),
    "running": frozenset({"stopping", "finished", "stopped", "failed"}),
    "stopping": frozenset({"stopped", "failed"}),
    "stopped": frozenset({"queued"}),
    "finished": frozenset({"queued"}),
    "failed": frozenset({"queued"}),
}
ENDED = tuple(s for s in STATUSES if s != "queued" and s not in ACTIVE)


def check_move(current: str, new: str) -> None:
    if new not in MOVES[current]:
        raise ValueError(f"a {current} run cannot become {new}")


def settled(current: str, code: int | None, has_final: bool, has_state: bool) -> str:
    """What an active run became once no process of it is left: finished when it exited
    cleanly with its final LoRA, stopped when asked to stop or when it exited cleanly with a
    resume state (a stop from outside), failed otherwise."""
    if current == "running" and code == 0 and has_final:
        return "finished"
    if current == "stopping" or (code == 0 and has_state):
        return "stopped"
    return "failed"
