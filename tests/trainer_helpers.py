"""Shared by the trainer tests: a tiny dataset folder and running the real program."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# Small enough for seconds per run: 64x64 targets, conditioning kept at that size.
FAST = ["--max_pixels", "4096", "--no-edit_image_auto_resize", "--lora_rank", "4",
        "--learning_rate", "1e-3"]


def make_dataset(folder: Path, n: int = 4, size: int = 64) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata_edit.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "edit_image", "prompt", "sample_id"])
        for i in range(n):
            make_image(size, size, seed=i).save(folder / f"images/source_{i}.png")
            # The edit: a mirrored, re-tinted picture.
            make_image(size, size, seed=i + 3).transpose(0).save(folder / f"images/edited_{i}.png")
            w.writerow([f"images/edited_{i}.png", f"images/source_{i}.png",
                        f"Make the sky blue, {i}", str(i)])
    return folder


def add_validation_pairs(folder: Path, ids: list[str], size: tuple[int, int] = (64, 64),
                         seed: int = 10, prompt: str = "Turn the cat into a dog") -> Path:
    """metadata_validation.csv with one held-out pair per id (ids may hold a slash: the
    sample file names must still be safe)."""
    with open(folder / "metadata_validation.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "edit_image", "prompt", "sample_id"])
        for i, sample_id in enumerate(ids):
            make_image(*size, seed=seed + i).save(folder / f"images/source_v{i}.png")
            make_image(*size, seed=seed + 10 + i).save(folder / f"images/edited_v{i}.png")
            w.writerow([f"images/edited_v{i}.png", f"images/source_v{i}.png",
                        prompt if len(ids) == 1 else f"{prompt}, {i}", sample_id])
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    e.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
              "PYTHONPATH": str(ROOT), **extra})
    return e


def trainer_cmd(model: Path, data: Path, out: Path, *args, launch: list[str] | None = None) -> list[str]:
    """The plain program, or under `accelerate launch *launch` (on a free port unless the
    launch options name one)."""
    prog = ["-m", "studio.trainer", "--model_path", str(model), "--dataset_base_path", str(data),
            "--output_path", str(out), *FAST, *map(str, args)]
    if launch is None:
        return [sys.executable, *prog]
    port = [] if "--main_process_port" in launch else ["--main_process_port", str(free_port())]
    return [ACCELERATE, "launch", *launch, *port, *prog]


def run_trainer(model, data, out, *args, launch=None, extra_env=None, check=True, timeout=240):
    proc = subprocess.run(trainer_cmd(model, data, out, *args, launch=launch), cwd=ROOT,
                          env=env(**(extra_env or {})), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def lora(path: Path) -> dict:
    return load_file(str(path))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def max_abs(a: dict) -> float:
    return max(v.abs().max().item() for k, v in a.items() if ".lora_B." in k)
