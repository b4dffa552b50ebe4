"""One input through several adapters, strengths and seeds: a labelled grid.

Columns are adapter x strength (the base model is one column), rows are seeds. Every
cell is an ordinary edit on the shared pipeline: adapters switch by weight (no reload)
and the prompt embedding and input latents come from the encode cache after the first cell.
When the input is a dataset pair with a target, every cell is scored against the pair
(engine/edit_metrics.py) and each column shows the mean over its seeds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from PIL import Image

from . import edit_metrics
from .adapters import AdapterRef
from .editor import Editor, Progress
from .grid import Box, draw_grid

BASE = "base"
# The compact line under a column: the metrics a reader checks first, each short.
@dataclass
class Column:
    label: str
    adapters: list[AdapterRef]


@dataclass
class Comparison:
    grid: Image.Image
    cells: list[list[Image.Image]]  # [row (seed)][column]
    boxes: list[list[Box]]
    columns: list[Column]
    seeds: list[int]
    seconds: float
    params: dict = field(default_factory=dict)
    # Per column, the mean of its cells' scores against the pair; None without a target.
    metrics: list[dict] | None = None


def plan_columns(choices: list[AdapterRef | None], strengths: list[float] | None = None,
                 stack: list[AdapterRef] | None = None) -> list[Column]:
    """`None` in choices is the base model. Each adapter gets one column per strength (its own
    strength when none are given); `stack` (e.g. a few-step LoRA) runs under every column."""
    stack = list(stack or [])
    columns = []
    for choice in choices:
        if choice is None:
            columns.append(Column(BASE, stack))
            continue
        for strength in strengths or [choice.strength]:
            ref = AdapterRef(choice.path, float(strength), choice.label)
            columns.append(Column(f"{ref.name} @ {strength:g}", stack + [ref]))
    if not columns:
        raise ValueError("choose at least one adapter or the base model to compare")
    return columns


def compare(editor: Editor, images: list[Image.Image], prompt: str, columns: list[Column],
            seeds: list[int], negative_prompt: str = "", steps: int | None = None,
            true_cfg_scale: float | None = None, size: tuple[int, int] | None = None,
            target: Image.Image | None = None, progress: Progress | None = None,
            cancel_key: str | None = None) -> Comparison:
    seeds = list(seeds) or [0]
    total_cells = len(seeds) * len(columns)
    started = time.perf_counter()
    rows: list[list[Image.Image]] = []
    scores: list[list[dict]] = []  # [row][column], against the pair when there is a target
    params: dict = {}
    for r, seed in enumerate(seeds):
        rows.append([])
        for c, column in enumerate(columns):
            done = r * len(columns) + c

            def cell_progress(step, total, done=done):
                if progress:
                    progress(done * total + step, total_cells * total)

            result = editor.edit(images, prompt, negative_prompt, seed=seed, steps=steps,
                                 true_cfg_scale=true_cfg_scale, size=size, adapters=column.adapters,
                                 progress=cell_progress, cancel_key=cancel_key)
            rows[-1].append(result.image)
            params = result.params
        if target is not None:
            scores.append([edit_metrics.score(cell, images[0], target) for cell in rows[-1]])
    per_column = [[row[c] for row in scores] for c in range(len(columns))] if scores else None
    metrics = [edit_metrics.mean_scores(cells) for cells in per_column] if per_column else None
    labels = [c.label for c in columns]
    shown = [[*images[:1], *([target] if target else []), *row] for row in rows]
    head = ["input", *(["target"] if target else [])]
    footers = [""] * len(head) + [edit_metrics.metrics_line(m) for m in metrics] if metrics else None
    grid, boxes = draw_grid(shown, head + labels, [f"seed {s}" for s in seeds],
                            cell=rows[0][0].size, footers=footers,
                            footer_label="mean" if len(seeds) > 1 else "")
    offset = len(head)
    params = {**{k: v for k, v in params.items() if k not in ("seed", "adapters")},
              "seeds": seeds,
              "columns": [{"label": c.label,
                           "adapters": [{"path": str(a.path), "strength": a.strength, "label": a.name}
                                        for a in c.adapters]} for c in columns]}
    if metrics:
        for entry, mean, cells in zip(params["columns"], metrics, per_column):
            entry["metrics"], entry["metrics_per_seed"] = mean, cells
        params["metrics_meaning"] = {m.name: edit_metrics.meaning(m.name) for m in edit_metrics.METRICS}
    return Comparison(grid=grid, cells=rows, boxes=[row[offset:] for row in boxes],
                      columns=columns, seeds=seeds, seconds=time.perf_counter() - started,
                      params=params, metrics=metrics)
