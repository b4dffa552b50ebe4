"""Benchmark: peak host memory while loading the transformer, block by block (load_transformer)
against from_pretrained followed by the savers and .to(device), as a multiple of the weights.

    .venv/bin/python bench/load_host_memory.py [--layers 8] [--device cpu|meta|cuda] [--dtype bf16]

The transformer is the demo's architecture scaled up (8 blocks of 8 heads x 128, joint
attention dim 1024: ~307M parameters, ~585 MB in bf16) with random weights, written with
save_pretrained into a temporary folder. Each load runs in a fresh subprocess that reports its
own peak RSS (VmHWM) and peak anonymous memory above what it had before the load, so peaks
never mix. Both loaders map the safetensors files without copying (mapped pages count in RSS
once read, but the kernel can drop them); anonymous memory is what a load really costs.

On `--device cpu` the weights end in host memory whatever the loader. `--device meta` stands
in for an accelerator on a machine without one: the weights leave host memory and nothing is
kept, so what remains is the cost of getting them out (with fp8 storage: the whole cast model
in host memory, or one block at a time). Prints JSON lines.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
# (loader, savers): what each child process loads.
CASES = [("from_pretrained", "none"), ("load_transformer", "none"),
         ("from_pretrained", "fp8_base"), ("load_transformer", "fp8_base")]


def build(folder: Path, layers: int, dtype: str) -> int:
    """Writes the scaled-up random transformer; returns the weights' size in bytes."""
    import torch
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, DTYPES[dtype]))  # built in the dtype: no fp32 copy
    try:
        model = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
            num_attention_heads=8, attention_head_dim=128, joint_attention_dim=1024,
            axes_dims_rope=(16, 56, 56), guidance_embeds=False)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (this process's peak). Not ru_maxrss: Linux carries the parent's
    peak across fork and exec into it, so every child would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class AnonPeak:
    """The peak of RssAnon, sampled every millisecond in a thread: anonymous memory is what a
    load costs for good (mapped safetensors pages also count in RSS, but the kernel can drop
    them; the kernel keeps no peak of it)."""

    def __init__(self):
        import threading

        self.peak, self._done = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _status_mb("RssAnon"))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mb("RssAnon"))


def child(folder: str, loader: str, savers_name: str, device: str, dtype: str) -> None:
    """One load; prints the peaks above the process's memory before it and what it holds after."""
    import gc

    import torch
    from diffusers import QwenImageTransformer2DModel

    from studio.engine.loading import load_transformer
    from studio.engine.savers import FP8, Savers, skip_patterns

    torch_dtype = getattr(torch, DTYPES[dtype])
    savers = Savers(fp8_base=savers_name == "fp8_base")
    gc.collect()
    rss, anon = _status_mb("VmRSS"), _status_mb("RssAnon")
    with AnonPeak() as anon_peak:
        if loader == "load_transformer":
            model = load_transformer(folder, device, torch_dtype, savers)
        else:  # the whole model in host memory, then the savers, then onto the device
            model = QwenImageTransformer2DModel.from_pretrained(folder, dtype=torch_dtype)
            if savers.fp8_base:
                model.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch_dtype,
                                               skip_modules_pattern=skip_patterns(model))
            model = model.to(device)
        gc.collect()
    print(json.dumps({"peak_mb": _status_mb("VmHWM") - rss, "peak_anon_mb": anon_peak.peak - anon,
                      "held_mb": _status_mb("VmRSS") - rss,
                      "parameters": sum(p.numel() for p in model.parameters())}))


def measure(folder: Path, loader: str, savers: str, device: str, dtype: str) -> dict:
    from tests.trainer_helpers import env

    cmd = [sys.executable, __file__, "--child", loader, savers, "--folder", str(folder),
           "--device", device, "--dtype", dtype]
    # glibc serves a freed tensor's size from its heap next time (its mmap threshold grows up
    # to 32 MB) and keeps that memory: the real model's tensors (up to 72 MB) are always
    # mapped and returned, this small model's (6 MB) would stay. A fixed threshold keeps it real.
    proc = subprocess.run(cmd, cwd=ROOT, env=env(MALLOC_MMAP_THRESHOLD_=str(2**20)),
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--child", nargs=2, metavar=("LOADER", "SAVERS"), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.folder, *a.child, a.device, a.dtype)
    work = Path(tempfile.mkdtemp(prefix="bench-load-host-memory-"))
    try:
        size = build(work / "transformer", a.layers, a.dtype)
        mb = size / 2**20
        for loader, savers in CASES:
            got = measure(work / "transformer", loader, savers, a.device, a.dtype)
            print(json.dumps({
                "bench": "load_host_memory", "loader": loader, "savers": savers,
                "value": round(got["peak_mb"] / mb, 3), "unit": "x weights (peak RSS)",
                "peak_anon_x_weights": round(got["peak_anon_mb"] / mb, 3),
                "held_x_weights": round(got["held_mb"] / mb, 3), "peak_mb": round(got["peak_mb"]),
                "weights_mb": round(mb), "parameters": got["parameters"], "layers": a.layers,
                "device": a.device, "dtype": a.dtype}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
