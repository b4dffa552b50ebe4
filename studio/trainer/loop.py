"""The training program: set up a run (run_setup.py), resume it, then step; after each step,
checkpoints, the validation loss and sample edits.

Runs from a dataset folder and a model folder alone (no UI, no SQLite store), on one CPU up
to several nodes of GPUs/NPUs. Rank 0 writes every file (DeepSpeed's optimizer shards
excepted, one per rank by design).
"""
from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from studio.engine import optional_torchao
from studio.engine.devices import peak_memory_gb
from studio.engine.savers import Savers

from . import (checkpoint, dist, faults, retention, run_files, sample_render, samples,
               scoreboard, steplog, validation)
from .args import parse_args
from .data import DatasetError
from .lora_io import LoraFormatError, loaded
from .objective import sample_loss
from .run_setup import Run, TrainingError, setup
from .schedule import TrainingSchedule

log = logging.getLogger("studio.trainer")
TRACEBACK_FRAMES = 6  # of an unexpected error, in the log: where it happened, not 40 frames


def train(args) -> int:
    run = setup(args)
    if run is None:  # --encode_only: the cache is filled, nothing trains
        return 0
    try:
        resume(run)
        catch_up(run)
        if run.start >= run.total:
            log.info("nothing to do: %d of %d steps already done", run.start, run.total)
            return 0
        stopped_after = train_steps(run)
    finally:
        run.close()
    if stopped_after is not None:
        log.info("stopped by %s after step %d; continue with --resume", run.stop.signal_name or
                 "another rank's signal", stopped_after)
    else:
        log.info("done: %d steps in %.1fs; LoRA at %s", run.total,
                 time.perf_counter() - run.started, run.output / run_files.FINAL)
    return 0


def resume(run: Run) -> None:
    """--resume: the current state's LoRA, optimizer and scheduler, and the step to go on
    from. Checkpoints newer than that step stop the run."""
    args, output = run.args, run.output
    if args.resume:
        folder = run_files.current_state(output)
        if folder is None:
            log.warning("--resume: no resume state under %s; starting from step 0", output)
        else:
            state = checkpoint.read_state(folder)
            if state["global_batch"] != run.order.global_batch:
                log.warning("global batch changed (%d -> %d): data order differs from the first run",
                            state["global_batch"], run.order.global_batch)
            checkpoint.restore(folder, run.transformer, run.optimizer_w, run.lr_sched, run.engine)
            run.start, run.prior_elapsed = state["step"], float(state.get("elapsed", 0.0))
            if dist.is_main():  # a kill can land between a state and its LoRA files
                checkpoint.write_loras(output, run.start, state.get("final", False),
                                       run.transformer, run.ckpt_info, only_missing=True)
            log.info("resumed at step %d of %d", run.start, run.total)
    _on_rank0(lambda: _newer_checkpoints(output, run.start))


def catch_up(run: Run) -> None:
    """What a kill left undone up to the start: validation losses and sample edits, the
    pruning after a save, and the scores (in the background)."""
    _fill_in(run)
    _retain(run.args, run.output)
    run.scorer.catch_up()


def train_steps(run: Run) -> int | None:
    """The steps from run.start to run.total; the step a stop ended on, or None."""
    args, order = run.args, run.order
    schedule = TrainingSchedule()
    log.info("training %d steps: %d pairs x %d repeat, global batch %d (%d process(es) x %d "
             "accumulation), lr %g", run.total, len(run.pairs), args.dataset_repeat,
             order.global_batch, run.world, run.gas, args.learning_rate)
    log.info("checkpoints: %s%s", f"every {run.every} steps" if run.every else "at each epoch's end",
             f", keeping the last {args.keep_checkpoints} and the best by "
             f"{scoreboard.LABELS[args.keep_best_by].lower()}"
             if args.keep_checkpoints else "")
    run.started = time.perf_counter()
    for step in range(run.start, run.total):
        t0 = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        mean_loss = _step(run, step, schedule)
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"loss is {mean_loss} at step {step + 1}: training diverged. Lower "
                f"--learning_rate (now {args.learning_rate}), prefer bf16 to fp16, and check the "
                f"dataset images; checkpoints saved before this step are intact.")
        done = step + 1
        now = time.perf_counter()
        elapsed = now - run.started
        if dist.is_main():
            row = {"step": done, "total": run.total, "epoch": round(order.epoch_after(done), 4),
                   "loss": mean_loss,
                   "lr": lr, "samples_per_s": order.global_batch / max(now - t0, 1e-9),
                   "elapsed": run.prior_elapsed + elapsed,
                   "eta": elapsed / (done - run.start) * (run.total - done),
                   "peak_mem_gb": round(peak_memory_gb(run.device), 3)}
            steplog.write(run.output / run_files.METRICS, row)
            run.tracker.step(row)
        stopping = dist.any_true(bool(run.stop))
        after_step(run, done, stopping, run.prior_elapsed + elapsed)
        if stopping:
            return done
    return None


def _step(run: Run, step: int, schedule: TrainingSchedule) -> float:
    """One optimizer step over `gas` micro-batches on every process; the mean loss."""
    args, accelerator = run.args, run.accelerator
    loss_sum = 0.0
    for micro in range(run.gas):
        entry = run.order.entry(step, micro, run.rank)
        with accelerator.accumulate(run.model):
            loss, _ = sample_loss(run.model, run.encoded(run.order.pair_index(entry)), schedule,
                                  run.order.generator(entry), run.device, run.dtype)
            accelerator.backward(loss)
            if args.max_grad_norm and accelerator.sync_gradients and not run.deepspeed:
                accelerator.clip_grad_norm_(run.params, args.max_grad_norm)
            run.optimizer_w.step()
            run.optimizer_w.zero_grad()
        loss_sum += float(loss.detach())
    run.lr_sched.step()
    return dist.all_sum(loss_sum) / (run.gas * run.world)


def after_step(run: Run, done: int, stopping: bool, elapsed: float) -> None:
    """A checkpoint step (or a stop): save, then the validation loss, the sample edits and
    retention. `elapsed`: the run's training seconds so far."""
    args, output, transformer = run.args, run.output, run.transformer
    scored = run.scored(done)
    if scored or stopping:
        _on_rank0(lambda: checkpoint.space_problem(output, transformer, done == run.total,
                                                   run.deepspeed))
        run.ckpt_info["elapsed"] = elapsed
        path = checkpoint.save(output, done, run.model, transformer, run.optimizer, run.lr_sched,
                               run.ckpt_info, run.engine, final=done == run.total)
        if path:
            log.info("step %d: saved %s", done, path.name)
        faults.point("after-saved", done)
    if run.validator and scored:  # also when a stop falls on a due step
        value = run.validator.record(done, transformer, run.device, run.dtype)
        run.tracker.validation(done, value)
        log.info("step %d: validation loss %.4f", done, value)
    if sample_render.due(args, done, scored, stopping):
        sample_render.render(run.sampler, transformer, done, output)  # rank 0; None elsewhere
        run.scorer.catch_up()
        run.tracker.sample_edits(done)
        dist.barrier()
    if scored or stopping:  # after the validation loss that may make it the best
        _retain(args, output)


def _fill_in(run: Run) -> None:
    """What kills left unrecorded up to the start (one can land anywhere between a checkpoint's
    state and its sample edits): the validation loss and sample edits of every checkpoint,
    scored with its LoRA file (the live weights are the start's), and the baseline."""
    args, output, start = run.args, run.output, run.start
    validated, edits = [], []
    if dist.is_main():
        have = {r["step"] for r in validation.read(output)}
        steps = sorted({k for k in run_files.checkpoint_steps(output) if k <= start} | {start})
        validated = [k for k in steps if run.validator and k not in have
                     and (k == 0 or run.scored(k))]
        edits = [k for k in steps if k and run.sampler and not samples.has(output, k)
                 and sample_render.due(args, k, run.scored(k), stopping=False)]
    validated = _from_rank0(validated)  # scored by every rank; edits are rank 0's alone
    for k in sorted(set(validated) | set(edits)):
        weights = run_files.lora_path(output, k) if k != start else None
        with loaded(run.transformer, weights, args.lora_rank, args.lora_alpha):
            if k in validated:
                value = run.validator.record(k, run.transformer, run.device, run.dtype)
                run.tracker.validation(k, value)
                log.info("step %d: validation loss %.4f%s", k, value,
                         " (before training)" if k == 0 else "")
            if k in edits:
                sample_render.render(run.sampler, run.transformer, k, output)
                run.tracker.sample_edits(k)
    dist.barrier()


def _from_rank0(values: list[int]) -> list[int]:
    """Rank 0's list on every rank (a few small all-reduces: the lists are short)."""
    n = int(dist.all_sum(len(values) if dist.is_main() else 0))
    return [int(dist.all_sum(values[i] if dist.is_main() else 0)) for i in range(n)]


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


def _retain(args, output: Path) -> None:
    """--keep_checkpoints: delete the step LoRA files it does not keep (rank 0); also at a
    start, since a kill can land between a save and its pruning."""
    if dist.is_main() and (removed := retention.prune(output, args.keep_checkpoints,
                                                        retention.best_by(args.keep_best_by))):
        log.info("retention: deleted the LoRA files of step(s) %s", ", ".join(map(str, removed)))


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


def main(argv: list[str] | None = None, program: bool = False) -> int:
    """`program`: this process is `python -m studio.trainer` itself, not a test's call."""
    args = parse_args(argv)
    if program:  # before anything imports diffusers, which would import torchao with it
        optional_torchao.keep_out_unless(Savers.of(args).quantized)
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
