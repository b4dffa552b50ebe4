"""The plan against the machine: what the devices have free, and a plain verdict with the
savers that would make a run fit."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .plan import Plan, TrainSetting, size, train_plan


@dataclass(frozen=True)
class Budget:
    device_gb: list[float]  # free memory of each visible device (empty on CPU)
    host_gb: float          # available host RAM

    def per_device(self) -> float | None:
        return min(self.device_gb) if self.device_gb else None


def budget(device: str) -> Budget:
    """Free memory now. The studio's own cached allocations count as free: it releases its
    editor before a run takes the device."""
    import psutil
    import torch

    host = psutil.virtual_memory().available / 2**30
    kind = device.split(":")[0]
    backend = getattr(torch, kind, None) if kind in ("cuda", "npu") else None
    if backend is None or not backend.is_available():
        return Budget([], round(host, 2))
    free = []
    for i in range(backend.device_count()):
        available, _ = backend.mem_get_info(i)
        free.append(round((available + backend.memory_reserved(i)) / 2**30, 2))
    return Budget(free, round(host, 2))


@dataclass(frozen=True)
class Verdict:
    fits: bool
    message: str


RESERVE = 0.10  # of the free memory, kept back for allocator fragmentation and the plan's error


def _limit(plan: Plan, have: Budget) -> tuple[float, str]:
    if plan.host_only or have.per_device() is None:
        return have.host_gb * (1 - RESERVE), "host RAM"
    return have.per_device() * (1 - RESERVE), "each card"


def _options(model: Path, s: TrainSetting, need: float, limit: float) -> list[str]:
    """Savers not yet on that close the gap, each with what it saves, fastest first."""
    out, savers = [], s.savers
    candidates = []
    if not s.gradient_checkpointing:
        candidates.append(("turn on gradient checkpointing", replace(s, gradient_checkpointing=True)))
    if not (savers.fp8_base or savers.quantized) and s.mode != "zero2":
        candidates.append(("turn on fp8 storage", replace(s, savers=replace(savers, fp8_base=True),
                                                          gradient_checkpointing=True)))
    if not savers.text_encoder_offload:
        candidates.append(("offload the text encoder",
                           replace(s, savers=replace(savers, text_encoder_offload=True))))
    for label, changed in candidates:
        saved = need - train_plan(model, changed).device_gb
        if saved > 0.05:
            out.append(f"{label} (−{saved:.0f} GB)")
    if s.mode != "zero2" and s.device != "cpu":
        from ..loading import block_count

        layers = block_count(model / "transformer")
        for n in range(savers.offload_blocks + 1, layers + 1):
            changed = replace(s, savers=replace(savers, offload_blocks=n), gradient_checkpointing=True)
            plan = train_plan(model, changed)
            if plan.device_gb <= limit:
                out.append(f"offload {n} blocks (−{need - plan.device_gb:.0f} GB)")
                break
    return out


def train_verdict(model: str | Path, setting: TrainSetting, plan: Plan, have: Budget) -> Verdict:
    return verdict(plan, have, lambda need, limit: _options(Path(model), setting, need, limit))


def verdict(plan: Plan, have: Budget, options=None) -> Verdict:
    """`options(need_gb, limit_gb)` names the savers that would close a gap."""
    if plan.host_gb > have.host_gb and not plan.host_only:
        return Verdict(False, f"needs {plan.host_gb - have.host_gb:.0f} GB more host RAM on this "
                              f"node ({plan.host_gb:.1f} GB planned, {have.host_gb:.1f} GB available): "
                              f"offload fewer blocks, or run fewer processes per node")
    limit, where = _limit(plan, have)
    spare = limit - plan.device_gb
    if spare >= 0:
        return Verdict(True, f"fits, {size(spare)} to spare on {where} "
                             f"({size(plan.device_gb)} planned of {size(limit)} usable)")
    message = f"needs {size(-spare)} more on {where} ({size(plan.device_gb)} planned, " \
              f"{size(limit)} usable: free memory less {RESERVE:.0%} reserve)"
    found = options(plan.device_gb, limit) if options else []
    if found:
        message += ": " + " or ".join(found)
    return Verdict(False, message)
