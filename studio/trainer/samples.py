"""Where sample edits live and how they are read back (no torch here: the job manager uses it).

    output/samples/step-000010/<sample_id>.png   one edit per validation pair
    output/samples/step-000010/samples.json      {"step", ..., "samples": [{sample_id, prompt,
                                                  source, target, output}, ...]}

A step folder is written under a dot-name and renamed into place whole, so a reader never
sees half of one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from studio.paths import safe_stem

from . import run_files

FOLDER = run_files.SAMPLES
INDEX = "samples.json"


def step_dir(output: Path, step: int) -> Path:
    return Path(output) / FOLDER / f"step-{step:06d}"


def file_names(sample_ids: list[str]) -> list[str]:
    """Safe, distinct PNG names for sample ids (ids may hold '/', spaces or repeat)."""
    names, seen = [], set()
    for sid in sample_ids:
        base = safe_stem(sid) or "sample"
        name, n = base, 2
        while name in seen:
            name, n = f"{base}-{n}", n + 1
        seen.add(name)
        names.append(f"{name}.png")
    return names


def has(output: Path, step: int) -> bool:
    return (step_dir(output, step) / INDEX).is_file()


def staging_dir(output: Path, step: int) -> Path:
    staging = run_files.partial(step_dir(output, step))
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, output: Path, step: int, index: dict) -> Path:
    """Write samples.json, then swap the folder in (a resumed run redoing a step replaces it)."""
    final = step_dir(output, step)
    for entry in index["samples"]:  # the staging name is never what a reader should see
        entry["output"] = str(final / Path(entry["output"]).name)
    (staging / INDEX).write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n",
                                 encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    return final


def list_samples(output_dir: str | Path) -> list[dict]:
    """Every rendered sample, latest step first (within a step in validation order); each
    entry is {step, sample_id, prompt, source, target, output} with absolute paths."""
    root = Path(output_dir) / FOLDER
    if not root.is_dir():
        return []
    found = []
    for folder in root.glob("step-*"):
        try:
            index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
            step = int(index.get("step", folder.name.split("-")[1]))
        except (OSError, ValueError, IndexError):
            continue  # not finished, or not ours
        for entry in index.get("samples", []):
            output = Path(entry["output"])
            found.append({**entry, "step": step,
                          "output": str(output if output.is_absolute() else folder / output)})
    found.sort(key=lambda e: -e["step"])  # stable: keeps each step's own order
    return found
