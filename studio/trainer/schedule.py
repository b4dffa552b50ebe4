"""The flow-matching training math of the reference recipe.

Source: DiffSynth-Studio 084bc2f, diffsynth/schedulers/flow_match.py (FlowMatchScheduler
with `set_timesteps(1000, training=True)`, as switch_pipe_to_training_mode in
diffsynth/trainers/utils.py calls it) configured as in diffsynth/pipelines/qwen_image.py:
sigma_min=0, sigma_max=1, extra_one_step=True, exponential_shift=True,
exponential_shift_mu=0.8, shift_terminal=0.02; and QwenImagePipeline.training_loss.
"""
from __future__ import annotations

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000
SHIFT_MU = 0.8
SHIFT_TERMINAL = 0.02


class TrainingSchedule:
    def __init__(self, steps: int = NUM_TRAIN_TIMESTEPS, mu: float = SHIFT_MU,
                 shift_terminal: float = SHIFT_TERMINAL):
        # extra_one_step: N+1 points from 1 to 0, the final 0 dropped -> 1, 1-1/N, ..., 1/N.
        sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
        # Exponential time shift: sigma' = e^mu / (e^mu + (1/sigma - 1)).
        sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        # Stretch so that the last sigma is exactly shift_terminal:
        # 1 - sigma' = (1 - sigma) * (1 - shift_terminal) / (1 - sigma[-1]).
        one_minus = 1 - sigmas
        sigmas = 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))
        self.sigmas = sigmas.float()
        self.timesteps = self.sigmas * NUM_TRAIN_TIMESTEPS
        # Timestep weight: a Gaussian bump over t in [0, 1000] centred at steps/2,
        # y = exp(-2 ((t - N/2) / N)^2), minus its minimum, scaled to mean 1.
        t = self.timesteps.double()
        y = torch.exp(-2 * ((t - steps / 2) / steps) ** 2)
        y = y - y.min()
        self.weights = (y * (steps / y.sum())).float()

    def __len__(self) -> int:
        return len(self.sigmas)

    def lookup(self, index: int, model_dtype: torch.dtype = torch.float32):
        """(timestep, sigma, weight) for a schedule index, as the reference gets them.

        The reference casts the timestep to the model dtype and then finds sigma and weight
        by nearest timestep (argmin), so in bf16 both come from the rounded timestep."""
        timestep = self.timesteps[index].to(model_dtype)
        nearest = int(torch.argmin((self.timesteps - timestep.float()).abs()))
        return timestep.float(), self.sigmas[nearest], self.weights[nearest]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma eps (FlowMatchScheduler.add_noise)."""
    return (1 - sigma) * x0 + sigma * noise


def training_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the model learns: eps - x0 (FlowMatchScheduler.training_target)."""
    return noise - x0


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weight) -> torch.Tensor:
    """mse(pred, target) in fp32 times the timestep weight (QwenImagePipeline.training_loss)."""
    return torch.nn.functional.mse_loss(pred.float(), target.float()) * weight
