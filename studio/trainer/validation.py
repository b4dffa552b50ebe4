"""Validation loss: the training objective on the held-out pairs, at fixed timesteps and noise.

A training step's loss mostly reflects the timestep it happened to draw; with the same four
timesteps and the same noise per pair at every checkpoint, the numbers are comparable across
checkpoints and say which one generalises best. Written to <output>/validation.jsonl, step 0
being the model before training.

Training is untouched: no gradients, private CPU generators (the global RNG is not used), the
unwrapped transformer (no DDP hooks). Every rank scores its share of the pairs.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import torch

from . import dist, faults, run_files, steplog
from .objective import loss_at
from .schedule import TrainingSchedule

QUANTILES = (0.125, 0.375, 0.625, 0.875)  # of the 1000-step schedule: noisy to nearly clean
MAX_PAIRS = 32


class ValidationLoss:
    def __init__(self, encoded: Callable[[int], dict], indices: list[int], sample_ids: list[str],
                 output: Path):
        self.encoded, self.indices, self.sample_ids = encoded, indices, sample_ids
        self.schedule = TrainingSchedule()
        self.file = output / run_files.VALIDATION

    @torch.no_grad()
    def score(self, transformer, device, dtype) -> float:
        total, count = 0.0, 0
        for j in range(dist.rank(), len(self.indices), dist.world()):
            item = self.encoded(self.indices[j])
            for k, quantile in enumerate(QUANTILES):
                seed = zlib.crc32(f"{self.sample_ids[j]}/{k}".encode("utf-8"))
                noise = torch.randn(item["target"].shape, dtype=torch.float32,
                                    generator=torch.Generator().manual_seed(seed))
                index = int(quantile * len(self.schedule))
                total += float(loss_at(transformer, item, self.schedule, index, noise, device, dtype)[0])
                count += 1
        return dist.all_sum(total) / max(dist.all_sum(count), 1.0)

    def record(self, step: int, transformer, device, dtype) -> float:
        """Score (on every rank, collectively) and append the row (rank 0)."""
        value = self.score(transformer, device, dtype)
        faults.point("validation", step)  # scored, not written
        if dist.is_main():
            steplog.write(self.file, {"step": step, "val_loss": value})
        return value


def read(output: Path) -> list[dict]:
    return steplog.read(Path(output) / run_files.VALIDATION)
