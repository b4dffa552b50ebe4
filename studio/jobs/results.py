"""A run's results as the Train tab and `studio train show` read them: its checkpoints
scored on the validation pairs, and the adapters of the best one and its neighbours.
Read-only: the scores are the trainer's file (trainer/scoreboard.py), the adapters the
store's rows (the manager registers them)."""
from __future__ import annotations

from pathlib import Path

from ..store import Store
from ..trainer import scoreboard
from . import run_folder


def scoreboard_rows(store: Store, run_id: int) -> list[dict]:
    """The run's checkpoints scored on its validation pairs, one row per step."""
    run = store.runs.require(run_id)
    return scoreboard.table(run_folder.output(Path(run["run_dir"])))


def best_adapters(store: Store, run_id: int, metric: str) -> list[dict]:
    """The adapters of the best checkpoint by `metric` and its neighbours, in step order."""
    run = store.runs.require(run_id)
    steps = scoreboard.around_best(scoreboard_rows(store, run_id), metric)
    if not steps:
        raise ValueError(f"no checkpoint of run {run_id} has a {scoreboard.LABELS[metric]} yet")
    project = store.runs.project_name(run)
    adapters = {r["step"]: r for r in store.run_checkpoints(project).get(run_id, [])}
    missing = [s for s in steps if s not in adapters]
    if missing:
        raise ValueError(f"step {missing[0]} of run {run_id} has no adapter (its file was removed?)")
    return [adapters[s] for s in steps]
