"""Editing many inputs with one loaded model, e.g. a LoRA over a folder or a validation set.

Each output is written as <out>/<name>.png with a line in <out>/index.jsonl. Inputs whose
output already exists are skipped, so an interrupted batch goes on where it stopped; an
input that fails is reported and the others still run.
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
from .editor import Editor


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
                _append(out_dir / "index.jsonl", {
                    "output": out.name, "inputs": [str(p) for p in item.inputs],
                    "target": str(item.target) if item.target else None,
                    "seconds": round(result.seconds, 3), **result.params})
                report.written.append(out)
        if progress:
            progress(done, len(items))
    report.seconds = time.perf_counter() - started
    return report


def _save(image: Image.Image, path: Path) -> None:
    partial = path.with_name(f".{path.name}.part")
    image.save(partial, format="PNG")
    os.replace(partial, path)  # a stopped batch leaves no half-written output to skip later


def _append(index: Path, row: dict) -> None:
    with index.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
