"""The run's scoreboard: every checkpoint's sample edits scored against their validation pairs.

    scoreboard.jsonl   {"step", "preview": {how the samples were made},
                        "pairs": [{"sample_id", "psnr", "ssim", ...}, ...]}   one line a step

Scores come from the published sample folders alone, so the trainer's rank 0 scores them in a
background thread (scoring 1 MP takes about a second of CPU, which the device should not wait
for), and a restart or resume scores whatever a kill left unscored. No torch here: the job
manager, the CLI and the UI read the table.
"""
from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from studio.engine import edit_metrics

from . import run_files, samples, steplog

log = logging.getLogger("studio.trainer")

FILE = run_files.SCOREBOARD
VAL_LOSS = "val_loss"  # rankable beside the edit metrics
CHOICES = [VAL_LOSS] + [m.name for m in edit_metrics.METRICS]
LABELS = {VAL_LOSS: "Validation loss", **{m.name: m.label for m in edit_metrics.METRICS}}


def read(output: Path) -> list[dict]:
    return steplog.read(Path(output) / FILE)


def _sample_steps(output: Path) -> dict[int, Path]:
    steps = {}
    for folder in (Path(output) / samples.FOLDER).glob("step-*"):
        if (folder / samples.INDEX).is_file():
            try:
                steps[int(folder.name.split("-")[1])] = folder
            except (IndexError, ValueError):
                continue
    return steps


def unscored(output: Path) -> list[int]:
    """Sample steps with no scoreboard row (or an older row than their samples)."""
    rows = {r["step"]: r for r in read(output)}
    found = []
    for step, folder in sorted(_sample_steps(output).items()):
        row = rows.get(step)
        if row is None or row.get("samples_mtime") != (folder / samples.INDEX).stat().st_mtime:
            found.append(step)
    return found


def score_step(output: Path, step: int) -> dict:
    """Score one published sample step and write its row (replacing an older one)."""
    index_path = samples.step_dir(output, step) / samples.INDEX
    index = json.loads(index_path.read_text(encoding="utf-8"))
    pairs = []
    for entry in index.get("samples", []):
        try:
            scores = edit_metrics.score(entry["output"], entry["source"], entry["target"])
        except (OSError, ValueError) as exc:  # a target deleted since: the others still count
            log.warning("step %d: %s not scored: %s", step, entry.get("sample_id"), exc)
            continue
        pairs.append({"sample_id": entry["sample_id"], **scores})
    preview = index.get("preview") or {"inference_steps": index.get("inference_steps"),
                                       "true_cfg_scale": index.get("true_cfg_scale")}
    row = {"step": step, "preview": preview, "pairs": pairs,
           "samples_mtime": index_path.stat().st_mtime}
    steplog.write(Path(output) / FILE, row)
    return row


class Scorer:
    """Rank 0's background scoring (other ranks: enabled=False, a no-op); one worker, so rows
    are written one at a time."""

    def __init__(self, output: Path, enabled: bool = True):
        self.output = Path(output)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoreboard") if enabled else None

    def catch_up(self) -> None:
        """Score every sample step that has no row yet, in the background."""
        if self.pool:
            self.pool.submit(self._catch_up)

    def _catch_up(self) -> None:
        for step in unscored(self.output):
            try:
                row = score_step(self.output, step)
                log.info("step %d: scoreboard %s", step, summary_line(row))
            except Exception as exc:  # noqa: BLE001 - scores are a view on training, never its end
                log.warning("step %d: scoring failed: %s: %s", step, type(exc).__name__, exc)

    def close(self) -> None:
        """Wait for the scoring under way (seconds)."""
        if self.pool:
            self.pool.shutdown(wait=True)


def summary_line(row: dict) -> str:
    return edit_metrics.metrics_line(edit_metrics.mean_scores(row["pairs"])) or "no pairs"


def table(output: Path) -> list[dict]:
    """One row per checkpoint: each metric's mean over the validation pairs and the pair that
    scored worst on it, with the validation loss; steps in order."""
    losses = {r["step"]: r.get(VAL_LOSS) for r in steplog.read(Path(output) / run_files.VALIDATION)}
    scored = {r["step"]: r for r in read(output)}
    rows = []
    for step in sorted(set(losses) | set(scored)):
        entry = scored.get(step, {"pairs": []})
        row = {"step": step, VAL_LOSS: losses.get(step), "pairs": len(entry["pairs"]),
               "preview": entry.get("preview"), "worst": {}, **edit_metrics.mean_scores(entry["pairs"])}
        for metric in edit_metrics.METRICS:
            present = [p for p in entry["pairs"] if p.get(metric.name) is not None]
            if present:
                row["worst"][metric.name] = max(present, key=lambda p: metric.badness(p[metric.name]))["sample_id"]
        rows.append(row)
    return rows


def badness(metric: str, value: float | None) -> float:
    if metric == VAL_LOSS:
        return math.inf if value is None else value
    return edit_metrics.BY_NAME[metric].badness(value)


def best(rows: list[dict], metric: str) -> int | None:
    """The step that scores best on `metric` (None when no row has it)."""
    ranked = [r for r in rows if r.get(metric) is not None]
    return min(ranked, key=lambda r: badness(metric, r[metric]))["step"] if ranked else None


def meaning(metric: str) -> str:
    if metric == VAL_LOSS:
        return ("Validation loss (lower is better): the training objective on the held-out pairs "
                "at fixed noise, comparable across checkpoints.")
    return edit_metrics.meaning(metric)


def around_best(rows: list[dict], metric: str, neighbours: int = 1) -> list[int]:
    """The best checkpoint by `metric` and the checkpoints either side of it, in step order
    (step 0, the model before training, is no checkpoint)."""
    steps = [r["step"] for r in rows if r["step"] > 0]
    top = best([r for r in rows if r["step"] > 0], metric)
    if top is None:
        return []
    i = steps.index(top)
    return steps[max(0, i - neighbours): i + neighbours + 1]


def preview_note(rows: list[dict]) -> str:
    """Which settings made the scored previews, and whether they are cheap ones."""
    previews = [r["preview"] for r in rows if r.get("preview")]
    if not previews:
        return ""
    p = previews[-1]
    text = f"{p.get('inference_steps')} steps, true CFG {p.get('true_cfg_scale')}"
    if p.get("lora"):
        text += f", under {Path(p['lora']).name} at {p.get('lora_strength')}"
    if p.get("savers"):
        text += f", {p['savers']}"
    if p.get("cheap"):
        text += (" — cheap previews: a deployment at the model card's settings "
                 f"({(p.get('model_card') or {}).get('steps')} steps, true CFG "
                 f"{(p.get('model_card') or {}).get('true_cfg_scale')}) looks different")
    return text
