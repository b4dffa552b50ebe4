"""scoring_cost_ratio: the time to score one validation pair's sample edit (every metric of
studio/engine/edit_metrics.py) divided by the time of that sample edit itself, on the demo model
on this CPU, at the trainer's default sample settings (8 steps, no CFG) and two sizes (goal <=
0.05).

The trainer scores in a background thread on rank 0 (studio/trainer/scoreboard.py), so the
device does not wait for it; this ratio is the CPU time it adds beside the sampling.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from studio.engine import edit_metrics
from studio.engine.demo_model import build_demo_model
from studio.engine.editor import Editor

STEPS, CFG = 8, 1.0  # the trainer's --sample_inference_steps and --sample_true_cfg_scale
REPEATS = 3


def _pair(size: int) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    source = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    source = Image.fromarray(source).resize((size, size), Image.Resampling.BICUBIC)
    target = np.asarray(source).copy()
    target[size // 4: size // 2, size // 4: size // 2] = 255 - target[size // 4: size // 2, size // 4: size // 2]
    return source, Image.fromarray(target)


def _best(fn) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        editor = Editor(build_demo_model(Path(tmp) / "demo"), device="cpu")
        for size in (512, 1024):
            source, target = _pair(size)
            edit = lambda: editor.edit(source, "invert the square", steps=STEPS,  # noqa: E731
                                       true_cfg_scale=CFG, size=(size, size)).image
            output = edit()  # warm-up: loads the pipeline
            edit_s = _best(edit)
            score_s = _best(lambda: edit_metrics.score(output, source, target))
            print(json.dumps({"metric": "scoring_cost_ratio", "size": f"{size}x{size}",
                              "value": round(score_s / edit_s, 4), "goal": 0.05,
                              "score_s": round(score_s, 3), "sample_edit_s": round(edit_s, 3),
                              "sample_steps": STEPS, "model": "demo", "device": "cpu"}))


if __name__ == "__main__":
    main()
