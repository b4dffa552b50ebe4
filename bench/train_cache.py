"""Benchmark: trainer steps/s on the demo model (CPU) with the encoded-pair cache and without.

    .venv/bin/python bench/train_cache.py [--steps 20] [--max_pixels 65536] [--pairs 4]

Both runs use the real program (`python -m studio.trainer`) and report the training loop's
own rate from metrics.jsonl (start-up excluded). Without the cache every step runs the text
encoder and the VAE, as DiffSynth-Studio does when it trains without its data_process pass.
Prints JSON lines; the cached run's one-time encoding cost is reported too.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.trainer_helpers import env, make_dataset  # noqa: E402


def run(model: Path, data: Path, out: Path, steps: int, max_pixels: int, *extra: str) -> dict:
    import subprocess

    cmd = [sys.executable, "-m", "studio.trainer", "--model_path", str(model),
           "--dataset_base_path", str(data), "--output_path", str(out), "--max_steps", str(steps),
           "--max_pixels", str(max_pixels), "--no-edit_image_auto_resize", "--lora_rank", "32",
           *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(OMP_NUM_THREADS="2"), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Steps 2.. only: the first step pays one-off allocation costs.
    loop_s = rows[-1]["elapsed"] - rows[0]["elapsed"]
    return {"steps_per_s": (len(rows) - 1) / loop_s, "wall_s": wall}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max_pixels", type=int, default=256 * 256)
    p.add_argument("--pairs", type=int, default=4)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-cache-"))
    try:
        from studio.engine.demo_model import build_demo_model

        model = build_demo_model(work / "demo")
        side = int(a.max_pixels ** 0.5)
        data = make_dataset(work / "ds", n=a.pairs, size=side)
        cold = run(model, data, work / "cold", a.steps, a.max_pixels)  # encodes, then trains
        cached = run(model, data, work / "warm", a.steps, a.max_pixels)  # all pairs cached
        uncached = run(model, data, work / "none", a.steps, a.max_pixels, "--no_cache")
        print(json.dumps({
            "bench": "train_cache_speedup", "value": round(cached["steps_per_s"] / uncached["steps_per_s"], 3),
            "unit": "x", "goal": ">= 1.5", "with_cache_steps_per_s": round(cached["steps_per_s"], 3),
            "without_cache_steps_per_s": round(uncached["steps_per_s"], 3),
            "size": f"{side}x{side}", "steps": a.steps, "device": "cpu", "model": "demo"}))
        print(json.dumps({
            "bench": "train_cache_wall", "value": round(cached["wall_s"], 2), "unit": "s",
            "first_run_with_encoding_s": round(cold["wall_s"], 2),
            "without_cache_s": round(uncached["wall_s"], 2), "steps": a.steps}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
