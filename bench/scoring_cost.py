"""scoring_cost_ratio: the time to score one validation pair's sample edit (every metric of
studio/engine/edit_metrics.py) divided by the time of that sample edit itself, on the demo model
on this CPU, at the trainer's default sample settings (8 steps, no CFG) and two sizes (goal <=
0.05).

scoring_wait_ratio: what the training loop itself waits for it, as the same fraction. The
trainer scores in a background thread on rank 0 (studio/trainer/scoreboard.py): the loop only
hands the published step over, and the scores land while it trains on.
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
from studio.trainer import samples, scoreboard

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
            wait_s = _handover(Path(tmp) / f"run{size}", output, source, target)
            common = {"size": f"{size}x{size}", "goal": 0.05, "sample_edit_s": round(edit_s, 3),
                      "sample_steps": STEPS, "model": "demo", "device": "cpu"}
            print(json.dumps({"metric": "scoring_cost_ratio", "value": round(score_s / edit_s, 4),
                              "score_s": round(score_s, 3), **common}))
            print(json.dumps({"metric": "scoring_wait_ratio", "value": round(wait_s / edit_s, 6),
                              "wait_s": round(wait_s, 6), **common}))


def _handover(output: Path, image, source, target) -> float:
    """The trainer's side of scoring one published sample step: the time catch_up() takes
    (the scoring itself runs on the background thread; close() waits for it here)."""
    staging = samples.staging_dir(output, 1)
    paths = [staging / n for n in ("out.png", "source.png", "target.png")]
    for im, path in zip((image, source, target), paths):
        im.save(path)
    samples.publish(staging, output, 1, {"step": 1, "samples": [
        {"sample_id": "p", "output": str(paths[0]), "source": str(samples.step_dir(output, 1) / "source.png"),
         "target": str(samples.step_dir(output, 1) / "target.png")}]})
    scorer = scoreboard.Scorer(output)
    started = time.perf_counter()
    scorer.catch_up()
    waited = time.perf_counter() - started
    scorer.close()
    assert len(scoreboard.read(output)[0]["pairs"]) == 1  # it did score, in the background
    return waited


if __name__ == "__main__":
    main()
