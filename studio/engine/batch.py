"""Editing many inputs with one loaded model, e.g. a LoRA over a folder or a validation set.

Each output is written as <out>/<name>.png with a line in <out>/index.jsonl. Inputs whose
output already exists are skipped, so an interrupted batch goes on where it stopped; an
input that fails is reported and the others still run. An input with a target (a dataset
pair) is scored against its pair (engine/edit_metrics.py), and the index ends with one
summary line per adapter stack: the mean over its scored outputs, "output" null.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from ..dataset.naming import IMAGE_EXTENSIONS
from . import edit_metrics
from .edit_metrics import mean_scores
from .editor import Editor

INDEX = "index.jsonl"


@dataclass
class BatchItem:
    name: str                  # the output file's stem
    inputs: list[Path]
    prompt: str
    target: Path | None = None  # a dataset pair's edited image, recorded for comparison


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input name, reason)
    seconds: float = 0.0
    summaries: list[dict] = field(default_factory=list)  # the index's summary lines


def folder_items(folder: str | Path, prompt: str | None) -> tuple[list[BatchItem], list[tuple[str, str]]]:
    """Every image in `folder` (not its subfolders), with the instruction from a `<stem>.txt`
    beside it or else `prompt`. Returns (items, images without any instruction)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    items, missing = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        sidecar = path.with_suffix(".txt")
        text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else (prompt or "")
        if text.strip():
            items.append(BatchItem(path.stem, [path], text))
        else:
            missing.append((path.name, "no instruction: add --prompt or a .txt beside it"))
    return items, missing


def edit_batch(editor: Editor, items: list[BatchItem], out_dir: str | Path, *, overwrite: bool = False,
               progress: Callable[[int, int], None] | None = None, **edit_options) -> BatchReport:
    """Run `editor.edit(inputs, prompt, **edit_options)` for each item; see the module doc."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BatchReport()
    started = time.perf_counter()
    for done, item in enumerate(items, 1):
        out = out_dir / f"{item.name}.png"
        if out.exists() and not overwrite:
            report.skipped += 1
        else:
            try:
                images = [Image.open(p) for p in item.inputs]
                result = editor.edit(images, item.prompt, **edit_options)
            except (OSError, ValueError) as exc:  # unreadable image, bad size or instruction
                report.errors.append((item.name, str(exc)))
            else:
                _save(result.image, out)
                metrics = _score(result.image, item, report)
                _append(out_dir / INDEX, {
                    "output": out.name, "inputs": [str(p) for p in item.inputs],
                    "target": str(item.target) if item.target else None,
                    "seconds": round(result.seconds, 3), **result.params, "metrics": metrics})
                report.written.append(out)
        if progress:
            progress(done, len(items))
    report.summaries = summarize(out_dir / INDEX)
    report.seconds = time.perf_counter() - started
    return report


def _score(output: Image.Image, item: BatchItem, report: BatchReport) -> dict | None:
    if not item.target:
        return None
    try:
        return edit_metrics.score(output, item.inputs[0], item.target)
    except (OSError, ValueError) as exc:  # the target went missing or is not an image
        report.errors.append((item.name, f"not scored (its output is written): {exc}"))
        return None


def summarize(index: Path) -> list[dict]:
    """Replace the index's summary lines with fresh ones, one per adapter stack, over every
    scored output it lists (also those of earlier, resumed calls; an overwritten output's
    latest line only). A line that is not JSON is kept as it is."""
    if not index.is_file():
        return []
    rows = []
    for line in index.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append(line)
    latest = {r["output"]: r for r in rows if isinstance(r, dict) and r.get("output")}
    kept = [r for r in rows if isinstance(r, str) or r is latest.get(r.get("output"))]
    groups: dict[str, list[dict]] = {}
    for row in latest.values():
        if row.get("metrics"):
            groups.setdefault(json.dumps(row.get("adapters", [])), []).append(row["metrics"])
    summaries = [{"output": None, "summary": True, "adapters": json.loads(key),
                  "scored": len(scores), "metrics": mean_scores(scores)}
                 for key, scores in groups.items()]
    if summaries or len(kept) < len(rows):
        partial = index.with_name(f".{index.name}.part")
        partial.write_text("".join(r + "\n" if isinstance(r, str) else _line(r)
                                   for r in kept + summaries), encoding="utf-8")
        os.replace(partial, index)  # a crash leaves the old index, never half of one
    return summaries


def _save(image: Image.Image, path: Path) -> None:
    partial = path.with_name(f".{path.name}.part")
    image.save(partial, format="PNG")
    os.replace(partial, path)  # a stopped batch leaves no half-written output to skip later


def _line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _append(index: Path, row: dict) -> None:
    with index.open("a", encoding="utf-8") as f:
        f.write(_line(row))
