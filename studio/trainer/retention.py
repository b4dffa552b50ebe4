"""Checkpoint retention (--keep_checkpoints N): the last N step LoRA files plus the best one,
the rest deleted as the run goes. The default (None) keeps every file.

Never deleted: final.safetensors, the resume states under states/ (checkpoint.py keeps those)
and the LoRA file of the current resume state's step. "Best" is a small chooser, `best_step`,
`best_by(metric)` ranks by a scoreboard metric instead (--keep_best_by). The best so far
is always kept, so the best of the whole run survives to its end.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from . import run_files, scoreboard

# (output folder, steps that have a LoRA file) -> the step to keep as best, or None.
Chooser = Callable[[Path, list[int]], "int | None"]


def best_by(metric: str = scoreboard.VAL_LOSS) -> Chooser:
    """The chooser that keeps the best checkpoint by a scoreboard metric (or the validation
    loss); a checkpoint not scored yet cannot be best, and it stays anyway while it is recent."""
    def choose(output: Path, steps: list[int]) -> int | None:
        rows = [r for r in scoreboard.table(output) if r["step"] in steps]
        return scoreboard.best([r for r in rows if r[metric] is None or math.isfinite(r[metric])],
                               metric)
    return choose


best_step = best_by()  # the validation loss


def kept(output: Path, keep_last: int, choose: Chooser = best_step) -> set[int]:
    """The steps whose LoRA files stay."""
    steps = sorted(run_files.checkpoint_steps(output))
    keep = set(steps[-keep_last:])
    best = choose(output, steps)
    if best is not None:
        keep.add(best)
    state = run_files.current_state(output)
    if state is not None and state.parent.name == run_files.STATES:
        keep.add(run_files.state_step(state))
    return keep


def prune(output: Path, keep_last: int | None, choose: Chooser = best_step) -> list[int]:
    """Delete the step LoRA files that retention does not keep (rank 0 only); returns their
    steps. Nothing is deleted without --keep_checkpoints."""
    if not keep_last:
        return []
    keep = kept(output, keep_last, choose)
    removed = []
    for step, path in sorted(run_files.checkpoint_steps(output).items()):
        if step not in keep:
            path.unlink(missing_ok=True)
            removed.append(step)
    return removed
