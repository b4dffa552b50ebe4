"""Editing images with a Qwen-Image-Edit pipeline that is loaded once and shared.

The UI calls `Editor.edit` from several worker threads: loading happens once behind a lock,
and pipeline calls are serialised because a diffusers pipeline keeps per-call state on
itself (and one accelerator runs one edit at a time anyway).

Memory savers (studio/engine/savers.py, the training flags of the same names): with any
transformer saver the transformer is loaded block by block to its place (engine/loading.py)
and handed to the pipeline, which must then not move it as a whole (`.to(device)` would
bring offloaded blocks back onto the device).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from .adapters import AdapterRef, AdapterSlots, adapter_key
from .devices import free_memory, pick_device, pick_dtype
from .encoding_memo import EncodingMemo
from .loading import BLOCKS, block_count, load_transformer
from .model_folder import ModelInfo, inspect_model_folder
from .savers import FP8, Savers, apply_text_encoder_savers, check, offload
from .speed import compile_backend, compile_transformer

Progress = Callable[[int, int], None]


class EditCancelled(Exception):
    """Raised out of the denoising loop when the caller cancels an edit."""


@dataclass
class EditResult:
    image: Image.Image
    seconds: float
    params: dict = field(default_factory=dict)


def size_for_area(width: int, height: int, area: int, multiple: int = 16) -> tuple[int, int]:
    """Output size with the input's aspect ratio at about `area` pixels, sides a multiple of 16
    (VAE factor 8 x patch 2)."""
    ratio = width / height
    out_w = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
    out_h = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
    return out_w, out_h


def lora_in_compute_dtype(transformer, dtype: torch.dtype) -> None:
    """peft gives a new adapter its base layer's dtype, fp8 on an fp8-stored layer: the LoRA
    weights would be rounded to 3 mantissa bits (and CPU kernels refuse fp8 arithmetic).
    peft takes a layer's `compute_dtype`, where it has one, instead (as for bitsandbytes)."""
    for module in transformer.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype == FP8:
            module.compute_dtype = dtype


def remove_group_offloading(module) -> None:
    """Take diffusers' group-offloading hooks off `module`; the weights stay where they are."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.group_offloading import (_GROUP_OFFLOADING,
                                                  _LAYER_EXECUTION_TRACKER,
                                                  _LAZY_PREFETCH_GROUP_OFFLOADING)

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in (_GROUP_OFFLOADING, _LAYER_EXECUTION_TRACKER, _LAZY_PREFETCH_GROUP_OFFLOADING):
        registry.remove_hook(name, recurse=True)


class Editor:
    def __init__(self, model_path: str | Path, device: str | None = None, dtype: str | None = None,
                 cpu_offload: bool = False, vae_tiling: bool = False, max_adapters: int = 8,
                 compile: bool | str = False, savers: Savers = Savers()):
        self.info: ModelInfo = inspect_model_folder(model_path)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.savers = savers
        # Checked now, like `compile`: an impossible combination fails at start, not at load.
        blocks = block_count(self.info.path / "transformer") if self.savers.offload_blocks else None
        check(self.savers, device=self.device, num_blocks=blocks, training=False, dtype=self.dtype,
              model_cpu_offload=cpu_offload)
        self.cpu_offload = cpu_offload
        self.vae_tiling = vae_tiling
        self.max_adapters = max_adapters
        self.compile = compile_backend(compile)  # checked now: a typo fails at start, not at load
        self._pipe = None
        self.adapters: AdapterSlots | None = None
        self.encoding_memo = EncodingMemo()
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}

    # -- loading ------------------------------------------------------------
    @property
    def pipeline(self):
        with self._load_lock:
            if self._pipe is None:
                self._pipe = self._load()
            return self._pipe

    @property
    def transformer_savers(self) -> bool:
        return bool(self.savers.fp8_base or self.savers.quantized or self.savers.offload_blocks)

    def describe_savers(self) -> str:
        """e.g. 'fp8 base, 1 blocks offloaded', model CPU offload included; empty: none."""
        parts = [self.savers.describe()] if self.savers != Savers() else []
        if self.cpu_offload and self.device != "cpu":
            parts.append("model CPU offload")
        return ", ".join(parts)

    def memory_plan(self, size: tuple[int, int] = (1024, 1024), images: int = 1):
        """(plan, verdict) of an edit at `size` with these savers on this device."""
        from .memory.plan import EditSetting, edit_plan
        from .memory.verdict import budget, verdict

        setting = EditSetting(width=size[0], height=size[1], edit_images=images,
                              savers=self.savers, cpu_offload=self.cpu_offload and self.device != "cpu",
                              device=self.device.split(":")[0],
                              dtype_bytes=self.dtype.itemsize)
        plan = edit_plan(self.info.path, setting)
        return plan, verdict(plan, budget(self.device))

    def _load(self):
        import diffusers

        cls = getattr(diffusers, self.info.pipeline_class)
        model_offload = self.cpu_offload and self.device != "cpu"
        given = {}
        if self.transformer_savers:
            # Model CPU offload moves the whole transformer on for each call: it starts on the CPU.
            place = "cpu" if model_offload else self.device
            given["transformer"] = load_transformer(self.info.path / "transformer", place,
                                                    self.dtype, self.savers)
            lora_in_compute_dtype(given["transformer"], self.dtype)
        pipe = cls.from_pretrained(self.info.path, dtype=self.dtype, **given)
        if model_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            placed = {id(m) for m in given.values()}
            if apply_text_encoder_savers(pipe.text_encoder, self.device, self.dtype, self.savers):
                placed.add(id(pipe.text_encoder))
            for component in pipe.components.values():
                if isinstance(component, torch.nn.Module) and id(component) not in placed:
                    component.to(self.device)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
        if self.device.split(":")[0] == "npu":  # torch_npu's fused attention/RMSNorm
            from .npu import apply_patches

            apply_patches(pipe.transformer)
        if self.compile:  # opt-in: the first edit at each size pays the compile
            compile_transformer(pipe.transformer, self.compile)
        pipe.set_progress_bar_config(disable=True)
        self.adapters = AdapterSlots(pipe, limit=self.max_adapters)
        self.encoding_memo.install(pipe)
        return pipe

    def release(self) -> bool:
        """Drop the pipeline (e.g. before a training run takes this device); the next edit
        loads it again. Returns whether anything was freed."""
        with self._run_lock, self._load_lock:  # same order as edit(): run, then load
            if self._pipe is None:
                return False
            self._pipe, self.adapters = None, None
            self.encoding_memo.clear()
            self.encoding_memo = EncodingMemo()
        free_memory(self.device)
        return True

    def shares_device(self, device: str) -> bool:
        """Whether a run on `device` (cpu, cuda, npu) competes with this editor's memory."""
        return device != "cpu" and self.device.split(":")[0] == device

    @property
    def defaults(self) -> dict:
        """Sampler defaults: the real model's recommended settings; few steps on the demo."""
        return self.info.sampler_defaults

    def default_size(self, image: Image.Image) -> tuple[int, int]:
        return size_for_area(*image.size, self.info.native_area)

    def _activate(self, pipe, refs: list[AdapterRef]) -> None:
        """Activate adapters, keeping the offloaded blocks as they are. diffusers re-applies
        group offloading to the whole transformer after loading or deleting a LoRA, which would
        move every block into host memory; with the hooks off during the load it leaves the
        transformer alone, and the first blocks are offloaded again, their new LoRA layers
        with them."""
        loads = self.savers.offload_blocks and any(
            Path(r.path).is_file() and adapter_key(Path(r.path)) not in self.adapters.loaded
            for r in refs)
        if not loads:
            self.adapters.activate(refs)
            return
        offloaded = list(getattr(pipe.transformer, BLOCKS))[:self.savers.offload_blocks]
        for block in offloaded:
            remove_group_offloading(block)
        try:
            self.adapters.activate(refs)
        finally:
            for block in offloaded:
                offload(block, self.device)

    # -- cancelling -----------------------------------------------------------
    def cancel(self, key: str) -> None:
        """Cancel the edit started with `cancel_key=key` (or the next one, if not started yet)."""
        self._cancel.setdefault(key, threading.Event()).set()

    # -- editing --------------------------------------------------------------
    def edit(self, images: list[Image.Image] | Image.Image, prompt: str, negative_prompt: str = "",
             seed: int = 0, steps: int | None = None, true_cfg_scale: float | None = None,
             size: tuple[int, int] | None = None, progress: Progress | None = None,
             cancel_key: str | None = None, adapters: list[AdapterRef] | None = None) -> EditResult:
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            raise ValueError("an edit needs an input image")
        if len(images) > self.info.max_images:
            raise ValueError(
                f"{self.info.pipeline_class} takes at most {self.info.max_images} input image(s), "
                f"got {len(images)}")
        if not prompt or not prompt.strip():
            raise ValueError("an edit needs an instruction (prompt)")
        images = [im.convert("RGB") for im in images]
        steps = int(steps or self.defaults["steps"])
        if steps < 2:
            # The Qwen schedule stretches sigmas to shift_terminal; with one step that is 0/0.
            raise ValueError("steps must be at least 2")
        cfg = float(self.defaults["true_cfg_scale"] if true_cfg_scale is None else true_cfg_scale)
        if size:
            width, height = (max(16, int(side) // 16 * 16) for side in size)
        else:
            width, height = self.default_size(images[-1])
        # diffusers only applies true CFG when a negative prompt is given; " " is the
        # empty negative the model card uses.
        negative = negative_prompt if negative_prompt.strip() else " "
        cancel = self._cancel.setdefault(cancel_key, threading.Event()) if cancel_key else None

        def on_step_end(pipe, step, timestep, tensors):
            if progress:
                progress(step + 1, steps)
            if cancel is not None and cancel.is_set():
                raise EditCancelled("edit cancelled")
            return tensors

        try:
            with self._run_lock:
                pipe = self.pipeline
                if cancel is not None and cancel.is_set():
                    raise EditCancelled("edit cancelled")
                started = time.perf_counter()
                self._activate(pipe, list(adapters or []))
                out = pipe(
                    image=images if self.info.max_images > 1 else images[0],
                    prompt=prompt,
                    negative_prompt=negative if cfg > 1 else None,
                    true_cfg_scale=cfg,
                    num_inference_steps=steps,
                    height=height,
                    width=width,
                    # A CPU generator gives the same noise on every device for a seed.
                    generator=torch.Generator("cpu").manual_seed(int(seed)),
                    callback_on_step_end=on_step_end,
                )
                seconds = time.perf_counter() - started
        finally:
            if cancel_key:
                self._cancel.pop(cancel_key, None)
        params = {"model": str(self.info.path), "prompt": prompt,
                  "negative_prompt": negative_prompt, "seed": int(seed), "steps": steps,
                  "cfg": cfg, "width": width, "height": height,
                  "adapters": [{"path": str(a.path), "strength": a.strength, "label": a.name}
                               for a in adapters or []]}
        if self.describe_savers():  # fp8 and int8 bases change the pixels a little
            params["memory_savers"] = self.describe_savers()
        return EditResult(image=out.images[0], seconds=seconds, params=params)
