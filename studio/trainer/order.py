"""Which pair, timestep and noise each sample of each step uses: a pure function of the seed.

The data is one endless stream of epochs, each a seeded permutation of the (repeated)
dataset. Step s consumes stream entries [s*G, (s+1)*G) with G = world * accumulation; entry
(s, micro, rank) is s*G + micro*world + rank. So 1 process with accumulation 2 and 2
processes with accumulation 1 train on the same samples with the same noise, and a resumed
run continues exactly where it stopped: no sampler or RNG state needs saving.
"""
from __future__ import annotations

import math

import torch


class DataOrder:
    def __init__(self, num_pairs: int, repeat: int, seed: int, world: int, accumulation: int):
        self.num_pairs, self.seed = num_pairs, seed
        self.epoch_len = num_pairs * repeat
        self.world, self.accumulation = world, accumulation
        self.global_batch = world * accumulation
        self._perms: dict[int, torch.Tensor] = {}

    def total_steps(self, num_epochs: int, max_steps: int | None) -> int:
        if max_steps:
            return max_steps
        return max(1, math.ceil(num_epochs * self.epoch_len / self.global_batch))

    def entry(self, step: int, micro: int, rank: int) -> int:
        return step * self.global_batch + micro * self.world + rank

    def pair_index(self, entry: int) -> int:
        epoch, pos = divmod(entry, self.epoch_len)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.epoch_len, generator=g)}
        return int(self._perms[epoch][pos]) % self.num_pairs

    def epoch_after(self, step: int) -> float:
        """Epochs completed once `step` steps are done."""
        return step * self.global_batch / self.epoch_len

    def generator(self, entry: int) -> torch.Generator:
        """The sample's private RNG for its timestep and noise."""
        return torch.Generator().manual_seed((self.seed * 2**32 + entry) % 2**63)
