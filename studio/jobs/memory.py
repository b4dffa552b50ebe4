"""The memory plan of a run's options, its verdict on this machine, and the presets' plans."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.devices import training_dtype
from ..engine.memory.plan import Plan, TrainSetting, size, train_plan
from ..engine.memory.verdict import Budget, Verdict, budget, train_verdict
from .launch import TrainOptions
from .presets import PRESET_CARD_GB, TRAIN_PRESETS, preset_options

DRIVER_GB = 0.5  # what the driver and the CUDA/CANN context take of a card before the run


def setting(opts: TrainOptions) -> TrainSetting:
    dtype = training_dtype(opts.device, opts.mixed_precision)
    return TrainSetting.of(opts, device=opts.device, mode=opts.mode,
                           processes_per_node=opts.processes_per_node,
                           num_machines=opts.num_machines, dtype_bytes=dtype.itemsize)


@dataclass
class RunPlan:
    plan: Plan
    verdict: Verdict | None  # None where this machine is not where the run's devices are

    def text(self) -> str:
        lines = self.plan.lines()
        if self.verdict:
            lines.append(("" if self.verdict.fits else "WILL NOT FIT: ") + self.verdict.message)
        return "\n".join(lines)


def run_plan(opts: TrainOptions, model: Path) -> RunPlan:
    s = setting(opts)
    plan = train_plan(model, s)
    have = budget(opts.device)
    # Checked only where the run's devices are this machine's: one node, and its kind visible.
    local = opts.num_machines == 1 and (opts.device == "cpu" or bool(have.device_gb))
    return RunPlan(plan, train_verdict(model, s, plan, have) if local else None)


def check(opts: TrainOptions, model: Path) -> RunPlan | None:
    """The plan; a run it says will not fit is refused unless the options override it. None
    where the folder has no readable weights (the run itself then reports the folder)."""
    try:
        planned = run_plan(opts, model)
    except (OSError, KeyError, ValueError):
        return None
    if planned.verdict and not planned.verdict.fits and not opts.ignore_memory_plan:
        raise ValueError(f"the memory plan says this run will not fit: {planned.verdict.message}. "
                         f"Start it anyway with 'Ignore the memory plan' (--ignore-memory-plan).")
    return planned


def card_budget(card_gb: float) -> Budget:
    return Budget([card_gb - DRIVER_GB], host_gb=float("inf"))


def preset_rows(model: Path) -> list[dict]:
    """Every preset's plan on `model`, with its verdict on the card it is sized for."""
    rows = []
    for name in TRAIN_PRESETS:
        opts = preset_options(name)
        s = setting(opts)
        plan = train_plan(model, s)
        card = PRESET_CARD_GB.get(name)
        verdict = train_verdict(model, s, plan, card_budget(card)) if card else None
        rows.append({"preset": name, "card": f"{card} GB" if card else "-",
                     "savers": s.savers.describe(), "per device": size(plan.device_gb),
                     "host per node": size(plan.host_gb), "peak phase": plan.phase,
                     "verdict": verdict.message if verdict else "(host RAM)"})
    return rows
