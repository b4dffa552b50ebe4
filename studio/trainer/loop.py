"""The training program: encode (cached), then the LoRA loop under accelerate.

Runs from a dataset folder and a model folder alone (no UI, no SQLite store), on one CPU up
to several nodes of GPUs/NPUs. Rank 0 writes every file (DeepSpeed's optimizer shards
excepted, one per rank by design).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from studio.engine.devices import peak_memory_gb
from studio.engine.savers import Savers

from . import (base_model, checkpoint, dist, faults, parquet_pairs, retention, run_files,
               sample_render, samples, scoreboard, steplog, trackers, validation)
from .args import parse_args
from .cache import EncodedCache, PairEncoder, model_fingerprint
from .data import DatasetError, load_pairs, load_validation_pairs
from .lora_io import LoraFormatError, load_into, loaded
from .objective import sample_loss
from .order import DataOrder
from .schedule import TrainingSchedule

log = logging.getLogger("studio.trainer")
TRACEBACK_FRAMES = 6  # of an unexpected error, in the log: where it happened, not 40 frames


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


def _cache_root(args) -> Path:
    # A parquet run may have no dataset folder; its output folder is always writable.
    beside = Path(args.dataset_base_path or args.output_path) / ".studio_cache"
    return Path(args.cache_path or beside).expanduser().resolve()


def _fixed_size(args) -> tuple[int, int] | None:
    return (args.width, args.height) if args.width else None


def _encode_cache(args, info, dtype) -> EncodedCache | None:
    """The on-disk cache of encodings (None with --no-cache), keyed by what decides them."""
    if not args.cache:
        return None
    fp = model_fingerprint(info.path)
    settings = {"max_pixels": args.max_pixels, "fixed": _fixed_size(args), "dtype": str(dtype),
                "edit_auto_resize": args.edit_image_auto_resize, "pipeline": info.pipeline_class}
    if Savers.of(args).fp8_text_encoder:  # other encodings: cached apart (offload changes none
        settings["fp8_text_encoder"] = True  # of them, and older caches keep their keys)
    return EncodedCache(_cache_root(args) / fp, fp, settings)


def _training_pairs(args, cache: EncodedCache | None):
    """The CSV's pairs (a list), or the parquet rows that can train (a lazy sequence that
    knows its cache keys)."""
    if not args.dataset_parquet:
        return load_pairs(args.dataset_base_path, args.dataset_metadata_path)
    return parquet_pairs.load(args.dataset_parquet, args.parquet_columns, args.max_pixels, cache)


def _encoded_source(args, pairs, info, device, dtype, stop: StopFlag, held_out=()):
    """A function pair-index -> encoded tensors (indices past the training pairs are the
    held-out ones); fills the on-disk cache first."""
    cache = _encode_cache(args, info, dtype)
    savers = Savers.of(args)
    make_encoder = lambda: PairEncoder(info.path, info.pipeline_class, device, dtype,  # noqa: E731
                                       args.max_pixels, _fixed_size(args),
                                       args.edit_image_auto_resize, savers)
    pair = lambda i: pairs[i] if i < len(pairs) else held_out[i - len(pairs)]  # noqa: E731
    count = len(pairs) + len(held_out)
    if cache is None:
        encoder = make_encoder()
        return lambda i: encoder.encode(pair(i))
    # Parquet pairs were keyed while scanned; reading every image again here would double it.
    known = getattr(pairs, "keys", None)
    keys = (known if known is not None else [cache.key(p) for p in pairs]) + \
        [cache.key(p) for p in held_out]
    missing = [i for i, k in enumerate(keys) if not cache.has(k)]
    dist.barrier()  # all processes agree on `missing` before anyone adds to the cache
    if missing:
        from tqdm import tqdm

        # Every process encodes its share (the cache folder is shared by all of them, as the
        # dataset is), so 8 cards encode 8x faster and nobody idles at the barrier for long.
        mine = missing[dist.rank()::dist.world()]
        if dist.is_main():
            log.info("encoding %d of %d pairs (%d cached) over %d process(es) into %s",
                     len(missing), count, count - len(missing), dist.world(), cache.root)
        if mine:
            encoder = make_encoder()
            for i in tqdm(mine, desc="encode", disable=None if dist.is_main() else True):
                if stop:
                    break  # what is encoded stays cached
                cache.save(keys[i], encoder.encode(pair(i)))
            encoder.release()  # the text encoder and VAE leave the device here
            log.info("rank %d encoded its %d pair(s)", dist.rank(), len(mine))
    elif dist.is_main():
        log.info("all %d pairs found in the cache %s", count, cache.root)
    dist.barrier()
    if dist.any_true(bool(stop)):
        raise SystemExit(0)
    return lambda i: cache.load(keys[i])


def _held_out(args) -> list:
    """Validation pairs for the validation loss; a broken validation file only disables it,
    as it only disables the sample edits. --encode_only takes them all, so that any later
    run finds the ones it scores already encoded."""
    if not (args.validation_loss or args.encode_only):
        return []
    try:
        return load_validation_pairs(args)[:None if args.encode_only else validation.MAX_PAIRS]
    except DatasetError as exc:
        log.warning("validation loss disabled: %s", exc)
        return []


def _lr_scheduler(args, optimizer, total: int):
    if args.lr_scheduler == "reference":
        # DiffSynth's: ConstantLR with torch's defaults (lr x 1/3 for the first 5 steps).
        return torch.optim.lr_scheduler.ConstantLR(optimizer)
    from diffusers.optimization import get_scheduler

    return get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                         num_training_steps=total)


def _oom_message(args) -> str:
    return ("out of memory. Try, in this order: a lower --max_pixels (now %d; MindSpeed-MM uses "
            "262144), --use_gradient_checkpointing, the memory savers (--fp8_base, or "
            "--quantize_base int8 with bf16; --offload_blocks N to keep N blocks in host memory; "
            "--text_encoder_offload or --fp8_text_encoder if encoding runs out), "
            "--no-edit_image_auto_resize, a lower --lora_rank, or DeepSpeed ZeRO-2 with optimizer "
            "offload (python -m studio.trainer.accelerate_config --mode zero2 --offload_optimizer "
            "cpu; it takes none of the transformer savers)." % args.max_pixels)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _on_rank0(check) -> None:
    """Run a check of the output folder, which rank 0 alone writes; every rank raises its
    error, so that none waits at a collective for a rank that has gone."""
    message = check() if dist.is_main() else None
    if dist.any_true(message is not None):
        raise TrainingError(message or "rank 0 stopped the run (its log says why)")


def _newer_checkpoints(output: Path, start: int) -> str | None:
    """A save writes its state before its LoRA file, so a checkpoint newer than the start means
    its state is lost (or --resume was left out): refuse rather than train over it."""
    newest = max(run_files.checkpoint_steps(output), default=0)
    if newest <= start:
        return None
    return (f"{output} holds checkpoints up to step {newest}, but training would start at step "
            f"{start}; refusing to overwrite them. Continue with --resume, or train into a new "
            f"--output_path.")


def _save_every(args, total: int) -> int | None:
    """Steps between checkpoints: --save_steps, or --num_checkpoints spread over the run;
    None: at each epoch's end."""
    if args.save_steps:
        return args.save_steps
    return math.ceil(total / args.num_checkpoints) if args.num_checkpoints else None


def _scored(every: int | None, order: DataOrder, total: int, done: int) -> bool:
    """A checkpoint step, which gets a validation loss (and by default sample edits): every
    `every` steps, else each epoch's end; and the last step."""
    if done == total:
        return True
    if every:
        return done % every == 0
    per_epoch = order.epoch_len / order.global_batch
    return math.floor(done / per_epoch) > math.floor((done - 1) / per_epoch)


def _from_rank0(values: list[int]) -> list[int]:
    """Rank 0's list on every rank (a few small all-reduces: the lists are short)."""
    n = int(dist.all_sum(len(values) if dist.is_main() else 0))
    return [int(dist.all_sum(values[i] if dist.is_main() else 0)) for i in range(n)]


def _fill_in(output: Path, start: int, scored, validator, sampler, transformer, args, device,
             dtype, tracker: trackers.Tracker) -> None:
    """What kills left unrecorded up to `start` (one can land anywhere between a checkpoint's
    state and its sample edits): the validation loss and sample edits of every checkpoint,
    scored with its LoRA file (the live weights are step `start`'s), and the baseline."""
    validated, edits = [], []
    if dist.is_main():
        have = {r["step"] for r in validation.read(output)}
        steps = sorted({k for k in run_files.checkpoint_steps(output) if k <= start} | {start})
        validated = [k for k in steps if validator and k not in have and (k == 0 or scored(k))]
        edits = [k for k in steps if k and sampler and not samples.has(output, k)
                 and sample_render.due(args, k, scored(k), stopping=False)]
    validated = _from_rank0(validated)  # scored by every rank; edits are rank 0's alone
    for k in sorted(set(validated) | set(edits)):
        weights = run_files.lora_path(output, k) if k != start else None
        with loaded(transformer, weights, args.lora_rank, args.lora_alpha):
            if k in validated:
                value = validator.record(k, transformer, device, dtype)
                tracker.validation(k, value)
                log.info("step %d: validation loss %.4f%s", k, value,
                         " (before training)" if k == 0 else "")
            if k in edits:
                sample_render.render(sampler, transformer, k, output)
                tracker.sample_edits(k)
    dist.barrier()


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


def _retain(args, output: Path) -> None:
    """--keep_checkpoints: delete the step LoRA files it does not keep (rank 0)."""
    if dist.is_main() and (removed := retention.prune(output, args.keep_checkpoints,
                                                        retention.best_by(args.keep_best_by))):
        log.info("retention: deleted the LoRA files of step(s) %s", ", ".join(map(str, removed)))


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


def train(args) -> int:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from studio.engine.model_folder import inspect_model_folder

    stop = StopFlag()
    output = Path(args.output_path).expanduser().resolve()
    # The last block's text-stream outputs feed nothing, so LoRA on them gets no gradient.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # --device cpu keeps a GPU machine's run on the CPU; under DeepSpeed accelerate would then
    # drop DeepSpeed (MULTI_CPU), so there the launch config alone decides.
    force_cpu = args.device == "cpu" and os.environ.get("ACCELERATE_USE_DEEPSPEED") != "true"
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              kwargs_handlers=[ddp], cpu=force_cpu)
    _setup_logging(output)
    if dist.is_main():
        run_files.clean_leftovers(output)
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
    savers, checkpointing, refused = base_model.plan(args, info.path, device, dtype,
                                                     base_model.run_mode(deepspeed, world))
    if refused:  # before the encoding, which takes minutes on a real dataset
        raise TrainingError("these memory savers cannot train here: " + "; ".join(refused))
    log.info("memory savers: %s; gradient checkpointing %s", savers.describe(),
             "on" if checkpointing else "off")
    _check_memory(args, info.path, device, dtype, base_model.run_mode(deepspeed, world), world)
    cache = _encode_cache(args, info, dtype)
    pairs = _training_pairs(args, cache)
    held_out = _held_out(args)
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
    # Held-out pairs are encoded (and cached) with the training pairs, after them.
    encoded = _encoded_source(args, pairs, info, device, dtype, stop, held_out)
    if args.encode_only:  # every process has encoded its share (the cache's barrier)
        log.info("encode only: %d pairs are in the cache; no training", len(pairs) + len(held_out))
        return 0
    # Validation prompts are encoded now, while the device has no transformer yet.
    sampler = sample_render.setup(args, info, device, dtype) if dist.is_main() else None

    # Loaded where the savers place it, LoRA in fp32 on the device; never moved as a whole
    # afterwards (that would undo block offload). Same LoRA init on every rank.
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
    engine = model if deepspeed else None

    ckpt_info = {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "seed": args.seed,
                 "global_batch": order.global_batch, "total_steps": total}
    start, prior_elapsed = 0, 0.0
    metrics_file = output / run_files.METRICS
    if args.resume:
        folder = run_files.current_state(output)
        if folder is None:
            log.warning("--resume: no resume state under %s; starting from step 0", output)
        else:
            state = checkpoint.read_state(folder)
            if state["global_batch"] != order.global_batch:
                log.warning("global batch changed (%d -> %d): data order differs from the first run",
                            state["global_batch"], order.global_batch)
            checkpoint.restore(folder, transformer, optimizer_w, lr_sched, engine)
            start, prior_elapsed = state["step"], float(state.get("elapsed", 0.0))
            if dist.is_main():  # a kill can land between a state and its LoRA files
                checkpoint.write_loras(output, start, state.get("final", False), transformer,
                                       ckpt_info, only_missing=True)
            log.info("resumed at step %d of %d", start, total)
    _on_rank0(lambda: _newer_checkpoints(output, start))
    validator = None
    if held_out:
        validator = validation.ValidationLoss(encoded, list(range(len(pairs), len(pairs) + len(held_out))),
                                              [p.sample_id for p in held_out], output)
    every = _save_every(args, total)
    scored = lambda done: _scored(every, order, total, done)  # noqa: E731
    _fill_in(output, start, scored, validator, sampler, transformer, args, device, dtype, tracker)
    _retain(args, output)  # a kill can land between a save and its pruning
    # Rank 0 scores sample edits in the background; what a kill left unscored is scored now.
    scorer = scoreboard.Scorer(output, enabled=dist.is_main())
    scorer.catch_up()
    if start >= total:
        log.info("nothing to do: %d of %d steps already done", start, total)
        scorer.close()  # the scoreboard is whole when the run ends
        tracker.finish()
        return 0

    schedule = TrainingSchedule()
    log.info("training %d steps: %d pairs x %d repeat, global batch %d (%d process(es) x %d "
             "accumulation), lr %g", total, len(pairs), args.dataset_repeat, order.global_batch,
             world, gas, args.learning_rate)
    log.info("checkpoints: %s%s", f"every {every} steps" if every else "at each epoch's end",
             f", keeping the last {args.keep_checkpoints} and the best by "
             f"{scoreboard.LABELS[args.keep_best_by].lower()}"
             if args.keep_checkpoints else "")
    started = time.perf_counter()
    for step in range(start, total):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = 0.0
        for micro in range(gas):
            entry = order.entry(step, micro, rank)
            with accelerator.accumulate(model):
                loss, _ = sample_loss(model, encoded(order.pair_index(entry)), schedule,
                                      order.generator(entry), device, dtype)
                accelerator.backward(loss)
                if args.max_grad_norm and accelerator.sync_gradients and not deepspeed:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer_w.step()
                optimizer_w.zero_grad()
            loss_sum += float(loss.detach())
        lr_sched.step()
        mean_loss = dist.all_sum(loss_sum) / (gas * world)
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"loss is {mean_loss} at step {step + 1}: training diverged. Lower "
                f"--learning_rate (now {args.learning_rate}), prefer bf16 to fp16, and check the "
                f"dataset images; checkpoints saved before this step are intact.")
        done = step + 1
        now = time.perf_counter()
        elapsed = now - started
        if dist.is_main():
            row = {"step": done, "total": total, "epoch": round(order.epoch_after(done), 4),
                   "loss": mean_loss,
                   "lr": lr, "samples_per_s": order.global_batch / max(now - t0, 1e-9),
                   "elapsed": prior_elapsed + elapsed,
                   "eta": elapsed / (done - start) * (total - done),
                   "peak_mem_gb": round(peak_memory_gb(device), 3)}
            steplog.write(metrics_file, row)
            tracker.step(row)
        stopping = dist.any_true(bool(stop))
        if scored(done) or stopping:
            _on_rank0(lambda: checkpoint.space_problem(output, transformer, done == total, deepspeed))
            ckpt_info["elapsed"] = prior_elapsed + elapsed
            path = checkpoint.save(output, done, model, transformer, optimizer, lr_sched,
                                   ckpt_info, engine, final=done == total)
            if path:
                log.info("step %d: saved %s", done, path.name)
            faults.point("after-saved", done)
        if validator and scored(done):  # also when a stop falls on a due step
            value = validator.record(done, transformer, device, dtype)
            tracker.validation(done, value)
            log.info("step %d: validation loss %.4f", done, value)
        if sample_render.due(args, done, scored(done), stopping):
            sample_render.render(sampler, transformer, done, output)  # rank 0; None elsewhere
            scorer.catch_up()
            tracker.sample_edits(done)
            dist.barrier()
        if scored(done) or stopping:  # after the validation loss that may make it the best
            _retain(args, output)
        if stopping:
            scorer.close()  # the scoreboard is whole when the run ends
            log.info("stopped by %s after step %d; continue with --resume", stop.signal_name or
                     "another rank's signal", done)
            tracker.finish()
            return 0
    scorer.close()  # the scoreboard is whole when the run ends
    tracker.finish()
    log.info("done: %d steps in %.1fs; LoRA at %s", total, time.perf_counter() - started,
             output / run_files.FINAL)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from studio.engine.model_folder import ModelFolderError

    output = Path(args.output_path).expanduser().resolve()
    try:
        return train(args)
    except (TrainingError, DatasetError, LoraFormatError, ModelFolderError,
            checkpoint.CheckpointError) as exc:
        return _fail(output, str(exc), 2)
    except Exception as exc:  # noqa: BLE001 - whatever ends the run is recorded as its error
        if _is_oom(exc):
            first = (str(exc).splitlines() or [""])[0]
            return _fail(output, f"{_oom_message(args)}\n  ({type(exc).__name__}: {first})", 3)
        log.error("%s", "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES)).rstrip())
        return _fail(output, f"{type(exc).__name__}: {exc}", 1)


def _fail(output: Path, message: str, code: int) -> int:
    """Log the error and record it as the run's (rank 0 writes error.json); where even that
    cannot be written (a full disk, a broken folder), it goes on stderr behind FATAL_PREFIX,
    which the supervisor's log keeps."""
    if log.handlers:
        log.error("%s", message)
    else:
        print(f"error: {message}", file=sys.stderr)
    if dist.is_main():
        try:
            run_files.write_error(output, message)
            return code
        except OSError as exc:
            log.error("could not write %s: %s", output / run_files.ERROR, exc)
    print(run_files.FATAL_PREFIX + " ".join(message.split("\n")), file=sys.stderr, flush=True)
    return code
