"""What a run would be, before it is queued: the model folder and start LoRA it would use,
its exact launch, its memory plan, every preset's plan, the model card's sampler settings.
Reads files and the store; starts and records nothing (the manager does: manager.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..engine.adapters import resolve_adapter
from ..store import Store
from ..trainer.lora_io import check_compatible
from . import launch, memory, run_folder
from .launch import TrainOptions


def absolute(path: str) -> str:
    """A user's file path as the trainer, started in another working directory, must see it."""
    return str(Path(path).expanduser().resolve()) if path.strip() else ""


def model_folder(store: Store, spec: str) -> Path:
    """The folder a model spec names, made absolute (the trainer starts in another working
    directory); `demo` or nothing: the studio's demo model under this projects folder, built
    on first use."""
    from ..engine.models import resolve_model

    return resolve_model(spec or "demo", store.root)


def start_lora(store: Store, opts: TrainOptions) -> TrainOptions:
    """The LoRA to start from: an adapter id becomes its file, which must fit the run."""
    if not opts.lora_checkpoint.strip():
        return opts
    try:
        ref = resolve_adapter(opts.lora_checkpoint, store.require_adapter)
    except FileNotFoundError as exc:
        raise ValueError(f"LoRA to start from: {exc}") from None
    check_compatible(ref.path, opts.lora_rank, opts.lora_target_modules)
    return dataclasses.replace(opts, lora_checkpoint=absolute(str(ref.path)))


def launch_preview(store: Store, opts: TrainOptions, run_dir: Path | None = None) -> dict:
    """The exact command, environment and accelerate config a run would use."""
    run_dir = run_dir or Path("<run folder>")
    opts = start_lora(store, opts)
    config = launch.accelerate_config(opts)
    cache = run_folder.encode_cache(run_dir) if run_dir.is_absolute() else \
        Path("<project>") / run_folder.ENCODE_CACHE
    command = launch.launch_command(opts, run_folder.config(run_dir), run_folder.dataset(run_dir),
                                    run_folder.output(run_dir), cache_dir=cache)
    env = launch.launch_env(opts)
    return {"command": command, "env": env, "accelerate_config": config,
            "shell": launch.shell_line(command, env)}


def memory_plan(store: Store, opts: TrainOptions) -> memory.RunPlan:
    return memory.run_plan(opts, model_folder(store, opts.model))


def preset_plans(store: Store, model: str) -> tuple[str, list[dict]]:
    """Every preset's plan on its card; for the demo model, on the real model's shapes
    (what the presets are sized for). Returns (the model planned, rows)."""
    if model == "demo":
        from ..engine.memory.shapes import shapes_folder

        folder = shapes_folder(store.root / "_models" / "qwen-image-edit-shapes")
        return "Qwen-Image-Edit (its shapes; the demo model is tiny)", memory.preset_rows(folder)
    folder = model_folder(store, model)
    return str(folder), memory.preset_rows(folder)


def sampler_defaults(store: Store, spec: str) -> dict:
    """The model card's steps and true CFG for this model folder."""
    from ..engine.model_folder import inspect_model_folder

    return inspect_model_folder(model_folder(store, spec)).sampler_defaults
