"""Benchmark: the memory plan's error on the demo model (CPU), per setting and at most.

    .venv/bin/python bench/memory_plan_error.py

For each setting (fp32/bf16, gradient checkpointing off/on, fp8 storage, 64x64 and 128x128
pairs with the edit image at the target's size), one training step is built as the trainer
builds it and metered by torch's CPU allocator (studio/engine/memory/meter.py); the planned
peak is train_plan's training parts. Error = planned / measured - 1 (> 0: the plan is high).
Prints JSON lines: one per setting, then the largest error.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.memory_measure import encode_pair, planned_and_measured, settings  # noqa: E402


def main() -> None:
    import torch

    from studio.engine.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="bench-memory-plan-"))
    try:
        model = build_demo_model(work / "demo")
        pairs, rows = {}, []
        for s in settings():
            if s.max_pixels not in pairs:
                pairs[s.max_pixels] = encode_pair(model, work / f"pair{s.max_pixels}",
                                                  s.max_pixels, torch.float32)
            row = planned_and_measured(model, s, pairs[s.max_pixels])
            rows.append(row)
            print(json.dumps({"bench": "memory_plan_error_setting", **row}), flush=True)
        worst = max(rows, key=lambda r: abs(r["error"]))
        print(json.dumps({
            "bench": "memory_plan_error", "value": round(abs(worst["error"]) * 100, 1), "unit": "%",
            "goal": "<= 20 on the demo (15 on a GPU with the real model)",
            "worst_setting": worst["setting"], "settings": len(rows),
            "mean_error_pct": round(sum(r["error"] for r in rows) / len(rows) * 100, 1),
            "measure": "torch CPU allocator (profiler memory events)", "device": "cpu",
            "model": "demo"}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
