"""edit_latency_s: one CPU edit on the demo model (256x256 output, 4 steps), after warm-up.

Prints one JSON object per line: the studio's Editor and, as the baseline, the plain
diffusers pipeline called with the same arguments in the same run.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import QwenImageEditPipeline
from PIL import Image

from studio.engine.demo_model import build_demo_model
from studio.engine.editor import Editor

REPEATS = 3


def timed(fn) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    image = Image.new("RGB", (512, 512), (120, 160, 200))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model = build_demo_model(Path(tmp) / "demo")
        print(json.dumps({"bench": "demo_model_build_s", "value": round(time.perf_counter() - started, 2),
                          "unit": "s"}), flush=True)
        editor = Editor(model, device="cpu")
        kwargs = dict(steps=4, size=(256, 256), true_cfg_scale=1.0, seed=0)

        def fresh_edit():
            editor.encoding_memo.clear()  # a new input each time, as a user's next edit would be
            editor.edit(image, "make the sky blue", **kwargs)

        studio_s = timed(fresh_edit)
        pipe = QwenImageEditPipeline.from_pretrained(model, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        baseline_s = timed(lambda: pipe(
            image=image, prompt="make the sky blue", height=256, width=256, num_inference_steps=4,
            true_cfg_scale=1.0, generator=torch.Generator("cpu").manual_seed(0)))
    print(json.dumps({"bench": "edit_latency_s", "value": round(studio_s, 3), "unit": "s",
                      "baseline_diffusers_s": round(baseline_s, 3), "steps": 4, "size": "256x256",
                      "device": "cpu", "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
