"""One training step on CPU, measured as the memory plan predicts it (shared by
tests/test_memory_plan.py and bench/memory_plan_error.py).

The transformer is built as the trainer builds it (load_transformer with the savers, LoRA in
fp32 over the default targets, AdamW), a real pair is encoded by the trainer's PairEncoder,
and the step after a first one is metered: from the second step on, AdamW's moments exist,
as they do at every step the plan describes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from studio.engine.demo_model import EDIT_EXAMPLES
from studio.engine.loading import load_transformer
from studio.engine.lora_targets import DEFAULT_TARGETS
from studio.engine.memory.meter import peak_cpu_bytes
from studio.engine.memory.plan import GB, TrainSetting, train_plan
from studio.engine.savers import Savers
from studio.trainer.lora_io import add_lora, lora_parameters
from studio.trainer.objective import loss_at
from studio.trainer.schedule import TrainingSchedule

from tests.conftest import make_image

MB = 2**20
# 57 tokens in the demo tokenizer: with the template's 7, the 64 that the plan assumes.
PROMPT = " ".join(EDIT_EXAMPLES[:5])


def settings() -> list[TrainSetting]:
    """fp32 and bf16, checkpointing off and on, 64x64 and 128x128 pairs, and fp8 storage."""
    out = []
    for pixels in (64 * 64, 128 * 128):
        for dtype_bytes in (4, 2):
            for checkpointing, savers in ((False, Savers()), (True, Savers()),
                                          (True, Savers(fp8_base=True))):
                out.append(TrainSetting(max_pixels=pixels, edit_auto_resize=False, lora_rank=4,
                                        savers=savers, gradient_checkpointing=checkpointing,
                                        device="cpu", dtype_bytes=dtype_bytes))
    return out


def label(s: TrainSetting) -> str:
    side = int(s.max_pixels ** 0.5)
    return "-".join([f"{side}px", "fp32" if s.dtype_bytes == 4 else "bf16",
                     "ckpt" if s.gradient_checkpointing else "no-ckpt"]
                    + (["fp8"] if s.savers.fp8_base else []))


def encode_pair(model: Path, folder: Path, max_pixels: int, dtype: torch.dtype,
                prompt: str = PROMPT) -> dict:
    """A square pair (target and edit image at the target's size) encoded by the trainer."""
    from studio.engine.model_folder import inspect_model_folder
    from studio.trainer.cache import PairEncoder
    from studio.trainer.data import Pair

    side = int(max_pixels ** 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in ((0, "target.png"), (1, "edit.png")):
        make_image(side, side, seed).save(folder / name)
        paths.append(folder / name)
    pair = Pair(paths[0], (paths[1],), prompt, "p0")
    info = inspect_model_folder(model)
    encoder = PairEncoder(model, info.pipeline_class, torch.device("cpu"), dtype, max_pixels,
                          None, False)
    try:
        return encoder.encode(pair)
    finally:
        encoder.release()


def _bytes(tensors) -> int:
    """Bytes of distinct storages (tied or viewed tensors counted once)."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def train_step_peak(model: Path, s: TrainSetting, encoded: dict) -> dict:
    """Peak bytes of one training step at setting `s`: what exists before it (weights, LoRA,
    optimizer states, the encoded pair) plus the meter's peak during it. One CPU thread: some
    kernels (CPU attention) allocate scratch per thread, which would make the figure depend on
    the machine; and the demo's ops are too small for threads to help."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _step_peak(model, s, encoded)
    finally:
        torch.set_num_threads(threads)


def _step_peak(model: Path, s: TrainSetting, encoded: dict) -> dict:
    dtype = torch.float32 if s.dtype_bytes == 4 else torch.bfloat16
    encoded = {k: v.to(dtype) if v.is_floating_point() else v for k, v in encoded.items()}
    torch.manual_seed(0)
    transformer = load_transformer(Path(model) / "transformer", "cpu", dtype, s.savers)
    transformer.requires_grad_(False)
    add_lora(transformer, s.lora_rank, s.lora_rank, s.lora_targets or DEFAULT_TARGETS)
    params = list(lora_parameters(transformer).values())
    for p in params:  # fp32 and trainable, as base_model.fresh_lora leaves them
        p.data = p.data.float()
        p.requires_grad_(True)
    if s.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    schedule = TrainingSchedule()
    noise = torch.randn(encoded["target"].shape, generator=torch.Generator().manual_seed(0))

    def step():
        loss, _ = loss_at(transformer, encoded, schedule, 500, noise, "cpu", dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    states = [v for state in optimizer.state.values() for v in state.values()
              if isinstance(v, torch.Tensor)]
    # Module attributes that are tensors but neither parameters nor buffers: the RoPE tables.
    tables = [v for module in transformer.modules() for v in vars(module).values()
              if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter)]
    resident = _bytes(list(transformer.parameters()) + list(transformer.buffers()) + tables
                      + states + list(encoded.values()) + [noise])
    with peak_cpu_bytes() as peak:
        step()
    return {"resident": resident, "step": peak.bytes, "total": resident + peak.bytes}


def planned_and_measured(model: Path, s: TrainSetting, encoded: dict) -> dict:
    """The plan's training peak and the measured one, in MB, and the plan's relative error."""
    plan = train_plan(model, s)
    # The sum of the parts: device_gb is rounded to 0.1 MB, a few % of the demo's figures.
    planned = sum(plan.parts.values()) * GB
    measured = train_step_peak(model, s, encoded)["total"]
    return {"setting": label(s), "phase": plan.phase, "planned_mb": round(planned / MB, 3),
            "measured_mb": round(measured / MB, 3), "error": round(planned / measured - 1, 4)}
