"""Following a training run the studio did not start, from its log file.

DiffSynth-Studio's train.py (and so the MindSpeed-MM recipe) shows progress only as a tqdm
bar on stderr, redrawn with `\\r`:

      3%|▎         | 30/1000 [01:02<33:20,  2.06s/it, loss=0.0723]

Every rank of a multi-process run draws its own bar into the same log, so one step shows
up once per rank (with that rank's loss), and each epoch starts a new bar at 0/N. The
reader takes the mean loss over the ranks of a step and counts bars as epochs. A log that
is still being written may end in half a bar: only complete fields are used.
"""
from __future__ import annotations

import re
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's cursor moves with several bars
# A bar without a description (the training loop's); "Loading checkpoint shards: 50%|…"
# and other labelled bars are not training progress.
_BAR = re.compile(r"^\s*\d{1,3}%\|[^|]*\|\s*(\d+)/(\d+)\s*\[([^\]]*)(\]?)")
_RATE = re.compile(r"([0-9]*\.?[0-9]+)\s*(it/s|s/it)")
_LOSS = re.compile(r"\bloss=([-+0-9.eE]+|nan|inf)(?=[,\]\s])")


def _seconds(text: str) -> float | None:
    """tqdm's [[H:]MM:SS] (or "?") in seconds."""
    try:
        parts = [float(p) for p in text.strip().split(":")]
    except ValueError:
        return None
    total = 0.0
    for part in parts:
        total = total * 60 + part
    return total


def _loss(inside: str) -> float | None:
    """The postfix's loss, only when its value is complete (followed by , ] or a space)."""
    found = _LOSS.search(inside)
    try:
        return float(found[1]) if found else None
    except ValueError:  # e.g. "1e" cut short of its exponent by a malformed line
        return None


def parse_log(text: str) -> dict:
    state = {"step": 0, "total": None, "epoch": 0, "global_step": 0, "loss": None,
             "it_per_s": None, "s_per_it": None, "elapsed": None, "eta": None, "eta_s": None,
             "losses": []}
    by_step: dict[int, list[float]] = {}
    epoch, best = 0, None  # best: the highest step seen in the current bar
    ranks, since_reset = 0, 0  # ranks: 0/N lines of the first bar, one per process
    for segment in re.split(r"[\r\n]", _ANSI.sub("", text)):
        bar = _BAR.match(segment)
        if not bar:
            continue
        n, total, inside, closed = int(bar[1]), int(bar[2]), bar[3], bool(bar[4])
        since_reset += 1
        if best is None:
            best = n
        elif n == 0 and best >= min(2, total):
            epoch, best, since_reset = epoch + 1, 0, 0  # a new bar: the next epoch
        if epoch and n >= total and since_reset < ranks:
            # A slower rank's last line of the previous bar, after the new one began: its
            # loss belongs to the previous epoch, its position is stale.
            stale = _loss(inside + ("]" if closed else ""))
            if stale is not None:
                by_step.setdefault((epoch - 1) * total + n, []).append(stale)
            continue
        if n == 0 and epoch == 0:
            ranks += 1
        best = max(best, n)
        step = epoch * total + n
        state.update(step=best, total=total, epoch=epoch + 1, global_step=epoch * total + best)
        timing, _, _ = inside.partition(",")
        if "<" in timing:
            elapsed, _, eta = timing.partition("<")
            state["elapsed"] = elapsed.strip()
            if closed or "," in inside:  # the ETA field is complete
                state["eta"], state["eta_s"] = eta.strip(), _seconds(eta)
        rate = _RATE.search(inside)
        if rate and float(rate[1]) > 0:
            value = float(rate[1])
            per_s = value if rate[2] == "it/s" else 1 / value
            state["it_per_s"], state["s_per_it"] = per_s, 1 / per_s
        loss = _loss(inside + ("]" if closed else ""))
        if loss is not None:
            by_step.setdefault(step, []).append(loss)
    state["losses"] = [(s, sum(v) / len(v)) for s, v in sorted(by_step.items())]
    if state["losses"]:
        state["loss"] = state["losses"][-1][1]
    return state


def follow_log(path: str | Path) -> dict:
    """Where an external run stands: step/total of the current epoch's bar, epoch,
    global_step, latest loss (mean over ranks), it_per_s and s_per_it, elapsed, eta (tqdm's
    text) and eta_s, and losses as [(global_step, loss)]."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"log file not found: {path}")
    return {"path": str(path), **parse_log(path.read_bytes().decode("utf-8", errors="replace"))}
