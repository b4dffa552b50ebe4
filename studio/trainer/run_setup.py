"""A run's setup: accelerate, the log, the tracker, the pairs and their encodings, the model
with its LoRA, the optimizer and the schedule, gathered in one `Run` that the loop trains
with (loop.py)."""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import (base_model, dist, encoding, run_files, sample_render, scoreboard, trackers,
               validation)
from .data import DatasetError
from .lora_io import load_into
from .order import DataOrder

log = logging.getLogger("studio.trainer")


class TrainingError(RuntimeError):
    pass


class StopFlag:
    """SIGTERM/SIGINT ask for a clean stop: finish the step, save, exit 0."""

    def __init__(self):
        self.signal_name = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal_name:  # a second Ctrl-C means now
            signal.signal(signum, signal.SIG_DFL)
        self.signal_name = signal.Signals(signum).name

    def __bool__(self):
        return self.signal_name is not None


@dataclass
class Run:
    """What the steps, their checkpoints and a resume share."""
    args: Any
    output: Path
    stop: StopFlag
    accelerator: Any
    tracker: trackers.Tracker
    scorer: scoreboard.Scorer        # rank 0's background scoring of the sample edits
    device: torch.device
    dtype: torch.dtype
    deepspeed: bool
    rank: int
    world: int
    pairs: Sequence                  # the training pairs; held-out ones are encoded after them
    held_out: list
    encoded: Callable[[int], dict]   # pair index -> its encodings
    sampler: Any                     # rank 0's sample edits (None elsewhere, or without pairs)
    transformer: torch.nn.Module     # the base with its LoRA: saved, validated, rendered
    params: list                     # the LoRA's trainable parameters
    model: Any                       # the transformer as accelerate prepared it: trained
    optimizer: torch.optim.Optimizer  # AdamW itself: its lr is logged, its state saved
    optimizer_w: Any                 # accelerate's wrapper: stepped, and restored at a resume
    lr_sched: Any
    engine: Any                      # the DeepSpeed engine, or None
    order: DataOrder
    total: int
    every: int | None                # steps between checkpoints; None: at each epoch's end
    ckpt_info: dict                  # what every state and LoRA file records
    validator: validation.ValidationLoss | None
    start: int = 0                   # the step training starts from (a resume moves it)
    prior_elapsed: float = 0.0       # training seconds before a resume
    started: float = 0.0             # time.perf_counter() at this process's first step

    @property
    def gas(self) -> int:
        return self.args.gradient_accumulation_steps

    def scored(self, done: int) -> bool:
        """A checkpoint step, which gets a validation loss (and by default sample edits): every
        `every` steps, else each epoch's end; and the last step."""
        if done == self.total:
            return True
        if self.every:
            return done % self.every == 0
        per_epoch = self.order.epoch_len / self.order.global_batch
        return math.floor(done / per_epoch) > math.floor((done - 1) / per_epoch)

    def close(self) -> None:
        self.scorer.close()  # the scoreboard is whole when the run ends
        self.tracker.finish()


def setup(args) -> Run | None:
    """Everything a run trains with, in the order that fails fastest: a refused saver or a
    plan that will not fit stops before the encoding, which takes minutes on a real dataset.
    None with --encode_only, once the cache is filled."""
    from studio.engine.model_folder import inspect_model_folder

    stop = StopFlag()
    output = Path(args.output_path).expanduser().resolve()
    accelerator = _accelerator(args)
    _setup_logging(output)
    if dist.is_main():
        run_files.clean_leftovers(output)
    # Before anything slow, so that a tracker that cannot start costs seconds; should the setup
    # fail after it, the tracker finishes at exit (it registers itself).
    tracker = _start_tracker(args, output)
    deepspeed = accelerator.state.deepspeed_plugin is not None
    rank, world, gas = dist.rank(), dist.world(), args.gradient_accumulation_steps
    device = accelerator.device
    if args.device and args.device.split(":")[0] != device.type:
        raise TrainingError(f"--device {args.device} asked, but accelerate placed this process on "
                            f"{device}; check the accelerate config and the visible devices")
    dtype = _dtype(args, device)
    log.info("rank %d of %d on %s, %s%s", rank, world, device, dtype,
             ", DeepSpeed ZeRO-%s" % accelerator.state.deepspeed_plugin.zero_stage if deepspeed else "")

    info = inspect_model_folder(_model_folder(args.model_path))
    mode = base_model.run_mode(deepspeed, world)
    savers, checkpointing, refused = base_model.plan(args, info.path, device, dtype, mode)
    if refused:
        raise TrainingError("these memory savers cannot train here: " + "; ".join(refused))
    log.info("memory savers: %s; gradient checkpointing %s", savers.describe(),
             "on" if checkpointing else "off")
    _check_memory(args, info.path, device, dtype, mode, world)
    pairs, held_out = _pairs(args, info, dtype)
    # Held-out pairs are encoded (and cached) with the training pairs, after them.
    encoded = encoding.encoded_source(args, pairs, info, device, dtype, stop, held_out)
    if args.encode_only:  # every process has encoded its share (the cache's barrier)
        log.info("encode only: %d pairs are in the cache; no training", len(pairs) + len(held_out))
        return None
    # Validation prompts are encoded now, while the device has no transformer yet.
    sampler = sample_render.setup(args, info, device, dtype) if dist.is_main() else None

    transformer, params = _transformer(args, info, device, dtype, savers, checkpointing)
    order = DataOrder(len(pairs), args.dataset_repeat, args.seed, world, gas)
    total = order.total_steps(args.num_epochs, args.max_steps)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    # Stepped once per optimizer step, on every rank alike.
    lr_sched = _lr_scheduler(args, optimizer, total)
    if deepspeed:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = 1  # one sample per device per step
        ds["gradient_accumulation_steps"] = gas
        ds["train_batch_size"] = gas * world
    elif world > 1:
        base_model.keep_frozen_out_of_ddp(transformer)
    # The model is where its savers put it: accelerate must not move it (DeepSpeed, which takes
    # no base savers, allows no say in placement).
    model, optimizer_w = accelerator.prepare(
        transformer, optimizer, device_placement=None if deepspeed else [False, False])

    validator = None
    if held_out:
        validator = validation.ValidationLoss(encoded, list(range(len(pairs), len(pairs) + len(held_out))),
                                              [p.sample_id for p in held_out], output)
    return Run(
        args=args, output=output, stop=stop, accelerator=accelerator, tracker=tracker,
        scorer=scoreboard.Scorer(output, enabled=dist.is_main()), device=device, dtype=dtype,
        deepspeed=deepspeed, rank=rank, world=world, pairs=pairs, held_out=held_out,
        encoded=encoded, sampler=sampler, transformer=transformer, params=params, model=model,
        optimizer=optimizer, optimizer_w=optimizer_w, lr_sched=lr_sched,
        engine=model if deepspeed else None, order=order, total=total,
        every=_save_every(args, total), validator=validator,
        ckpt_info={"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "seed": args.seed,
                   "global_batch": order.global_batch, "total_steps": total})


def _accelerator(args):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # The last block's text-stream outputs feed nothing, so LoRA on them gets no gradient.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # --device cpu keeps a GPU machine's run on the CPU; under DeepSpeed accelerate would then
    # drop DeepSpeed (MULTI_CPU), so there the launch config alone decides.
    force_cpu = args.device == "cpu" and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true"
    return Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                       kwargs_handlers=[ddp], cpu=force_cpu)


def _setup_logging(output: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    log.propagate = False
    handlers = [logging.StreamHandler(sys.stderr)]
    if dist.is_main():
        output.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output / run_files.LOG, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    # Loading bars of every component (and of each sample edit) would bury the run's own
    # lines in the log the studio shows; progress is in metrics.jsonl.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _start_tracker(args, output: Path) -> trackers.Tracker:
    """--report_to's tracker on rank 0 (none for --encode_only, which trains nothing); its
    failure to start stops every rank."""
    tracker, message = None, None
    if dist.is_main() and not args.encode_only:
        try:
            tracker = trackers.Tracker(args.report_to, output, args)
        except trackers.TrackerError as exc:
            message = str(exc)
    if dist.any_true(message is not None):
        raise TrainingError(message or "rank 0 could not start the experiment tracker")
    return tracker or trackers.Tracker("none", output, args)


def _dtype(args, device: torch.device) -> torch.dtype:
    from studio.engine.devices import training_dtype

    return training_dtype(device.type, args.mixed_precision)


def _model_folder(spec: str) -> Path:
    from studio.engine.models import resolve_model
    from studio.paths import projects_dir

    if spec != "demo":
        return Path(spec).expanduser().resolve()
    if dist.is_main():  # build the demo model once, then everyone loads it
        resolve_model("demo", projects_dir())
    dist.barrier()
    return resolve_model("demo", projects_dir())


def _check_memory(args, model_path, device, dtype, mode: str, world: int) -> None:
    """The memory plan at the top of the log; a run it says will not fit stops here, on every
    rank, unless --ignore_memory_plan."""
    planned, verdict = base_model.memory_plan(args, model_path, device, dtype, mode, world)
    if dist.is_main():
        for line in planned.lines():
            log.info("%s", line)
        log.info("memory plan on %s: %s", device, verdict.message)
    if dist.any_true(not verdict.fits and not args.ignore_memory_plan):
        reason = verdict.message if not verdict.fits else "another process's device will not fit"
        raise TrainingError(f"the memory plan says this run will not fit: {reason}. Turn on the "
                            f"savers it names, or start anyway with --ignore_memory_plan.")


def _pairs(args, info, dtype) -> tuple[Sequence, list]:
    """The training pairs and the held-out ones, each within the pipeline's input images."""
    pairs = encoding.training_pairs(args, encoding.encode_cache(args, info, dtype))
    held_out = encoding.held_out(args)
    if args.dataset_parquet and not held_out and dist.is_main():
        log.info("no validation pairs: a parquet run takes them from --validation_metadata_path "
                 "or <dataset_base_path>/metadata_validation.csv")
    # A parquet row has one source image, so only a CSV's pairs can hold too many.
    crowded = [p for p in (held_out if args.dataset_parquet else pairs + held_out)
               if len(p.inputs) > info.max_images]
    if crowded:
        raise DatasetError(f"sample {crowded[0].sample_id} (and {len(crowded) - 1} more) has "
                           f"{len(crowded[0].inputs)} edit images; {info.pipeline_class} takes at "
                           f"most {info.max_images}")
    return pairs, held_out


def _transformer(args, info, device, dtype, savers, checkpointing):
    """The base where its savers place it, with the LoRA in fp32 on the device (the same init
    on every rank); never moved as a whole afterwards, which would undo block offload."""
    transformer, params = base_model.training_transformer(info.path, device, dtype, savers, args,
                                                          checkpointing)
    if args.lora_checkpoint:
        n = load_into(transformer, args.lora_checkpoint, args.lora_rank, args.lora_alpha)
        log.info("started from %s (%d tensors)", args.lora_checkpoint, n)
    if device.type == "npu":  # torch_npu's fused attention/RMSNorm, as the recipe's NPU patch
        from studio.engine.npu import apply_patches

        log.info("NPU fused operators: %s", ", ".join(apply_patches(transformer)) or "none")

    if args.compile_transformer:  # after LoRA and checkpointing, so the graphs include them
        from studio.engine.speed import compile_transformer

        log.info("torch.compile (%s): %d blocks", args.compile_transformer,
                 compile_transformer(transformer, args.compile_transformer))
    return transformer, params


def _lr_scheduler(args, optimizer, total: int):
    if args.lr_scheduler == "reference":
        # DiffSynth's: ConstantLR with torch's defaults (lr x 1/3 for the first 5 steps).
        return torch.optim.lr_scheduler.ConstantLR(optimizer)
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                         num_training_steps=total)


def _save_every(args, total: int) -> int | None:
    """Steps between checkpoints: --save_steps, or --num_checkpoints spread over the run;
    None: at each epoch's end."""
    if args.save_steps:
        return args.save_steps
    return math.ceil(total / args.num_checkpoints) if args.num_checkpoints else None
