"""compare_overhead_ratio: a 4-adapter comparison on the demo model divided by 4 single
edits, each of one of the same adapters on a fresh input (goal <= 1.15).

Single edits clear the encode cache first, as separate requests with new inputs would;
the comparison reuses one encoding and switches adapters without reloading.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from studio.engine.adapters import AdapterRef
from studio.engine.compare import compare, plan_columns
from studio.engine.demo_model import build_demo_model
from studio.engine.editor import Editor
from tests.lora_files import random_lora, save_lora

KW = dict(steps=4, size=(256, 256), true_cfg_scale=1.0)


def main() -> None:
    image = Image.new("RGB", (512, 512), (120, 160, 200))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_demo_model(Path(tmp) / "demo")
        loras = [save_lora(random_lora(model, seed=i), Path(tmp) / f"lora{i}.safetensors")
                 for i in range(4)]
        editor = Editor(model, device="cpu")
        refs = [AdapterRef(p) for p in loras]
        for ref in refs:  # warm-up: every adapter loaded once, as in a running studio
            editor.edit(image, "warm up", adapters=[ref], **KW)

        started = time.perf_counter()
        for ref in refs:
            editor.encoding_memo.clear()
            editor.edit(image, "make the sky blue", adapters=[ref], **KW)
        singles = time.perf_counter() - started

        editor.encoding_memo.clear()
        started = time.perf_counter()
        compare(editor, [image], "make the sky blue", plan_columns(refs), seeds=[0], **KW)
        grid = time.perf_counter() - started
    print(json.dumps({"bench": "compare_overhead_ratio", "value": round(grid / singles, 3),
                      "unit": "x", "compare_s": round(grid, 2), "four_single_edits_s": round(singles, 2),
                      "goal": "<= 1.15", "adapters": 4, "steps": 4, "size": "256x256"}), flush=True)


if __name__ == "__main__":
    main()
