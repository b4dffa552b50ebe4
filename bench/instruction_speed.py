"""Benchmark: instruction proposals per second on the demo model (CPU), and an estimate for
a real Qwen2.5-VL-7B on one GPU.

    .venv/bin/python bench/instruction_speed.py

The demo run goes through the same path as the Dataset tab and the CLI (InstructionJob over
stored pairs, 512×512 images, max_new_tokens 40). The estimate is arithmetic, stated with
its assumptions: a proposal is one prefill of the two pictures and the prompt plus ~40
generated tokens, each costing ~2 × parameters FLOPs; at batch 1 a generated token also
reads every weight once, so the larger of the compute time and the weight-read time counts.
Prints JSON lines: the demo measurement, then one estimate per GPU.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = 4
NEW_TOKENS = 40
# Qwen2.5-VL-7B: ~7.6e9 parameters in all, of which the vision tower ~0.67e9.
LM_PARAMS, VISION_PARAMS = 7.0e9, 0.67e9
WEIGHT_BYTES = 2 * (LM_PARAMS + VISION_PARAMS)  # bf16
# Each picture at 512×512: (512/14)^2 ≈ 1340 patches for the vision tower, 4 merged into one
# of ~335 tokens for the language model; the prompt's text ~150 tokens.
PATCHES_PER_IMAGE, TOKENS_PER_IMAGE, PROMPT_TOKENS = 1340, 335, 150
GPUS = {  # dense bf16 peak FLOP/s, memory bandwidth B/s
    "H100 SXM": (989e12, 3.35e12),
    "A100 80GB": (312e12, 2.0e12),
    "RTX 4090 (24 GB)": (165e12, 1.0e12),
}
FLOPS_SHARE = 0.4      # achieved share of the peak FLOP/s (prefill, vision tower)
BANDWIDTH_SHARE = 0.7  # achieved share of the memory bandwidth when decoding at batch 1


def demo_rate() -> dict:
    from studio.dataset import importers
    from studio.engine.demo_model import build_demo_model
    from studio.jobs.instruction_writing import InstructionJob, WriteRequest
    from studio.store import Store
    from tests.conftest import make_image

    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    try:
        model = build_demo_model(work / "demo")
        store = Store(work / "projects")
        store.create_project("p")
        for n in range(PAIRS):
            make_image(512, 512, n).save(work / f"s{n}.png")
            make_image(512, 512, n + 50).save(work / f"t{n}.png")
            importers.import_pair(store, "p", work / f"s{n}.png", work / f"t{n}.png", "")
        stamps = []
        job = InstructionJob(store, WriteRequest("p", model=str(model), device="cpu",
                                                 max_new_tokens=NEW_TOKENS))
        started = time.perf_counter()
        run = job.run(progress=lambda done, total: stamps.append(time.perf_counter()))
        total = time.perf_counter() - started
        steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # the first pays the load
        store.close()
        return {"bench": "instruction_speed_demo", "pairs": PAIRS, "status": run["status"],
                "proposals": run["done"] - run["failed"], "seconds": round(total, 2),
                "proposals_per_s": round(PAIRS / total, 3),
                "steady_proposals_per_s": round(1 / steady, 3), "device": "cpu",
                "max_new_tokens": NEW_TOKENS}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def estimate(name: str, flops_per_s: float, bandwidth: float) -> dict:
    prefill_tokens = 2 * TOKENS_PER_IMAGE + PROMPT_TOKENS
    prefill_flops = 2 * LM_PARAMS * prefill_tokens + 2 * VISION_PARAMS * 2 * PATCHES_PER_IMAGE
    flops_per_token = 2 * LM_PARAMS
    prefill_s = prefill_flops / (flops_per_s * FLOPS_SHARE)
    token_compute_s = flops_per_token / (flops_per_s * FLOPS_SHARE)
    token_read_s = WEIGHT_BYTES / (bandwidth * BANDWIDTH_SHARE)
    per_proposal = prefill_s + NEW_TOKENS * max(token_compute_s, token_read_s)
    flops_only = prefill_s + NEW_TOKENS * token_compute_s
    return {"bench": "instruction_speed_7b_estimate", "gpu": name,
            "flops_per_generated_token": flops_per_token, "prefill_flops": prefill_flops,
            "generated_tokens": NEW_TOKENS,
            "proposals_per_s_flops_bound": round(1 / flops_only, 1),
            "proposals_per_s": round(1 / per_proposal, 2),
            "limit": "weight reads" if token_read_s > token_compute_s else "compute",
            "assumption": f"batch 1, bf16 weights ({WEIGHT_BYTES / 1e9:.1f} GB), {FLOPS_SHARE:.0%} "
                          f"of peak FLOP/s, {BANDWIDTH_SHARE:.0%} of bandwidth, 2 pictures "
                          f"at 512x512, "
                          f"{NEW_TOKENS} generated tokens"}


def main() -> None:
    print(json.dumps(demo_rate()), flush=True)
    for name, (flops, bandwidth) in GPUS.items():
        print(json.dumps(estimate(name, flops, bandwidth)), flush=True)


if __name__ == "__main__":
    main()
