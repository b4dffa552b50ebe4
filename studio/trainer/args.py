"""Command-line arguments of `python -m studio.trainer`.

Names follow DiffSynth-Studio's `train.py` (qwen_image_parser) so that the reference recipe's
shell scripts translate flag for flag; the studio-only flags come last.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from studio.engine.lora_targets import DEFAULT_TARGETS  # noqa: F401 - the flag's default, re-exported
from studio.engine.savers import QUANTIZE_CHOICES

from . import scoreboard

from .tracker_names import TRACKERS, tracker_problem



class _RaisingParser(argparse.ArgumentParser):
    """Reports a bad flag as ValueError, for checks before a run is queued."""

    def error(self, message):
        raise ValueError(message)


LR_SCHEDULERS = ("reference", "constant", "constant_with_warmup", "linear", "cosine")


def build_parser(cls: type[argparse.ArgumentParser] = argparse.ArgumentParser):
    p = cls(
        prog="python -m studio.trainer",
        description="Train a Qwen-Image-Edit LoRA (run it under `accelerate launch`).")
    p.add_argument("--model_path", default="demo",
                   help="model folder in diffusers layout, or 'demo' for the tiny random model")
    p.add_argument("--dataset_base_path", default=None,
                   help="dataset folder (holds images/); with --dataset_parquet optional, for "
                        "its metadata_validation.csv and the default cache")
    p.add_argument("--dataset_metadata_path", default=None,
                   help="metadata_edit.csv (default: <dataset_base_path>/metadata_edit.csv)")
    p.add_argument("--dataset_parquet", default=None, metavar="FILE|DIR|GLOB",
                   help="train on parquet shards read in place instead of metadata_edit.csv: a "
                        "file, every *.parquet under a folder, or a glob (quote it); UltraEdit, "
                        "InstructPix2Pix and MagicBrush columns are found, other layouts need "
                        "--parquet_columns; rows that cannot train are skipped and named in the log")
    p.add_argument("--parquet_columns", default=None, metavar="source=COL,target=COL,prompt=COL",
                   help="the parquet columns holding the source image, the edited target and the "
                        "instruction (and id=COL for sample ids)")
    p.add_argument("--max_pixels", type=int, default=1024 * 1024,
                   help="target images larger than this are scaled down (dynamic resolution)")
    p.add_argument("--height", type=int, default=None, help="fixed target height (with --width)")
    p.add_argument("--width", type=int, default=None, help="fixed target width (with --height)")
    p.add_argument("--dataset_repeat", type=int, default=1, help="times each pair is seen per epoch")
    p.add_argument("--num_epochs", type=int, default=1)
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--lr_scheduler", default="reference", choices=LR_SCHEDULERS,
                   help="reference: DiffSynth's (lr/3 for 5 steps, then constant); the others "
                        "are diffusers' get_scheduler over the run's steps")
    p.add_argument("--lr_warmup_steps", type=int, default=0,
                   help="linear warm-up steps (not with 'reference' or 'constant')")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_grad_norm", type=float, default=None,
                   help="clip the gradient norm (off by default, as in the reference; DeepSpeed "
                        "runs clip with the config's gradient_clipping, 1.0 in the recipe's)")
    p.add_argument("--lora_rank", type=int, default=32)
    p.add_argument("--lora_alpha", type=float, default=None, help="default: the rank")
    p.add_argument("--lora_target_modules", default=DEFAULT_TARGETS)
    p.add_argument("--lora_checkpoint", default=None,
                   help="start from this LoRA (diffusers, DiffSynth or ComfyUI keys)")
    p.add_argument("--use_gradient_checkpointing", default=None,
                   action=argparse.BooleanOptionalAction,
                   help="recompute each block's activations in backward (default: on for "
                        "CUDA/NPU, as the reference recipe, off on CPU)")
    p.add_argument("--output_path", default="./models/train")
    p.add_argument("--save_steps", type=int, default=None,
                   help="save a LoRA every N steps (default: at the end of each epoch)")
    p.add_argument("--num_checkpoints", type=int, default=None,
                   help="without --save_steps: save N LoRAs over the run, every ceil(steps/N) "
                        "steps (default: at the end of each epoch)")
    p.add_argument("--keep_checkpoints", type=int, default=None,
                   help="keep the last N step LoRAs plus the best by validation loss, deleting "
                        "the others as the run goes (default: keep all; final.safetensors and "
                        "the resume state are never deleted)")
    p.add_argument("--keep_best_by", default=scoreboard.VAL_LOSS, choices=scoreboard.CHOICES,
                   help="what 'best' means for --keep_checkpoints: the validation loss, or a "
                        "scoreboard metric of the sample edits (e.g. ssim, pixel_shift)")
    p.add_argument("--report_to", default="none", choices=TRACKERS,
                   help="also log to this experiment tracker (rank 0, through accelerate): "
                        "tensorboard writes into <output_path>/tensorboard; wandb runs offline "
                        "without WANDB_API_KEY; mlflow logs to <output_path>/mlruns unless "
                        "MLFLOW_TRACKING_URI is set. Each needs its library (requirements-trackers.txt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "fp16", "bf16"],
                   help="auto: bf16 on CUDA/NPU, fp32 on CPU")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint under --output_path")
    # Studio additions.
    p.add_argument("--edit_image_auto_resize", default=True, action=argparse.BooleanOptionalAction,
                   help="resize the edit (input) image to ~1 MP, sides multiples of 32, as the "
                        "reference does; --no-edit_image_auto_resize keeps it at the target's "
                        "max_pixels sizing")
    p.add_argument("--cache_path", default=None,
                   help="encoded-pair cache (default: <dataset_base_path>/.studio_cache, or for "
                        "a parquet run without it <output_path>/.studio_cache: give one to share "
                        "encodings between runs)")
    p.add_argument("--no_cache", action="store_true",
                   help="encode every pair at every step (slow; for comparison)")
    p.add_argument("--encode_only", action="store_true",
                   help="encode the pairs (training and validation) into the cache, then exit: "
                        "a later run with the same model and settings encodes nothing")
    p.add_argument("--compile_transformer", nargs="?", const="inductor", default=None,
                   choices=["inductor", "aot_eager", "eager"],
                   help="torch.compile each transformer block (opt-in; the first steps pay the compile)")
    p.add_argument("--device", default=None,
                   help="cpu keeps the run on the CPU; cuda/npu only check where accelerate put it")
    # Memory savers (studio/engine/savers.py); they combine, except where the run refuses.
    p.add_argument("--fp8_base", action="store_true",
                   help="store the frozen transformer in fp8, compute in bf16 (about half the "
                        "weight memory; each layer pays a cast)")
    p.add_argument("--quantize_base", default="none", choices=QUANTIZE_CHOICES,
                   help="int8: the frozen transformer quantized by torchao (QLoRA-style; needs "
                        "bf16 and the [quant] extra)")
    p.add_argument("--offload_blocks", type=int, default=0,
                   help="keep this many transformer blocks in host memory, each layer coming "
                        "onto the device just before use (needs gradient checkpointing)")
    p.add_argument("--text_encoder_offload", action="store_true",
                   help="while encoding, keep the text encoder's layers in host memory")
    p.add_argument("--fp8_text_encoder", action="store_true",
                   help="store the text encoder in fp8 while encoding (changes the encodings "
                        "slightly, so they are cached apart)")
    p.add_argument("--ignore_memory_plan", action="store_true",
                   help="start even when the memory plan says the run will not fit")
    # Sample edits of the validation pairs (written by rank 0 under <output>/samples/).
    p.add_argument("--validation_metadata_path", default=None,
                   help="validation pairs (default: <dataset_base_path>/metadata_validation.csv "
                        "if it exists)")
    p.add_argument("--sample_steps", type=int, default=None,
                   help="render sample edits every N steps (default: at each checkpoint; 0: never)")
    p.add_argument("--sample_inference_steps", type=int, default=8,
                   help="denoising steps per sample edit")
    p.add_argument("--sample_true_cfg_scale", type=float, default=1.0,
                   help="true CFG for sample edits (1 = off, twice as fast)")
    p.add_argument("--sample_lora", default=None,
                   help="a few-step LoRA file stacked under the trained LoRA in the sample edits, "
                        "to preview what a deployment with it shows (set the steps and CFG it "
                        "was made for)")
    p.add_argument("--sample_lora_strength", type=float, default=1.0,
                   help="strength of --sample_lora")
    p.add_argument("--max_samples", type=int, default=4,
                   help="sample edits per checkpoint (the first N validation pairs)")
    p.add_argument("--validation_loss", default=True, action=argparse.BooleanOptionalAction,
                   help="at the start and at each checkpoint, the loss on (up to 32) validation "
                        "pairs at fixed timesteps and noise, in <output>/validation.jsonl")
    return p


def check_args(argv: list[str]) -> argparse.Namespace:
    """parse_args that raises ValueError instead of exiting."""
    return parse_args(argv, _RaisingParser)


def parse_args(argv: list[str] | None = None,
               parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser):
    parser = build_parser(parser_class)
    args = parser.parse_args(argv)
    if args.lora_alpha is None:
        args.lora_alpha = float(args.lora_rank)
    _check_dataset(parser, args)
    if (args.height is None) != (args.width is None):
        parser.error("--height and --width go together")
    for name in ("dataset_repeat", "num_epochs", "gradient_accumulation_steps", "lora_rank",
                 "max_pixels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.save_steps is not None and args.save_steps < 1:
        parser.error("--save_steps must be at least 1")
    for name in ("num_checkpoints", "keep_checkpoints"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.save_steps and args.num_checkpoints:
        parser.error("give --save_steps or --num_checkpoints, not both")
    if (missing := tracker_problem(args.report_to)):
        parser.error(missing)
    if args.sample_steps is not None and args.sample_steps < 0:
        parser.error("--sample_steps must be 0 (never) or more")
    if args.sample_inference_steps < 2:  # the Qwen schedule divides by steps - 1
        parser.error("--sample_inference_steps must be at least 2")
    if args.lr_warmup_steps < 0:
        parser.error("--lr_warmup_steps must be 0 or more")
    if args.lr_warmup_steps and args.lr_scheduler in ("reference", "constant"):
        parser.error(f"--lr_scheduler {args.lr_scheduler} has no warm-up; pick "
                     f"constant_with_warmup, linear or cosine")
    if args.offload_blocks < 0:
        parser.error("--offload_blocks must be 0 or more")
    if args.max_samples < 0:
        parser.error("--max_samples must be 0 or more")
    if args.sample_lora and not Path(args.sample_lora).expanduser().is_file():
        parser.error(f"--sample_lora {args.sample_lora}: no such file")
    if not 0.0 <= args.sample_lora_strength <= 2.0:
        parser.error("--sample_lora_strength must be between 0 and 2")
    if args.encode_only and args.no_cache:
        parser.error("--encode_only fills the cache; it cannot go with --no_cache")
    return args


def _check_dataset(parser, args) -> None:
    """A CSV dataset folder or parquet shards; the parquet flags go together."""
    if not (args.dataset_base_path or args.dataset_parquet):
        parser.error("give --dataset_base_path (a dataset folder) or --dataset_parquet")
    if args.dataset_parquet and args.dataset_metadata_path:
        parser.error("--dataset_parquet replaces --dataset_metadata_path (the training pairs come "
                     "from the parquet; validation pairs from --validation_metadata_path)")
    if args.parquet_columns and not args.dataset_parquet:
        parser.error("--parquet_columns goes with --dataset_parquet")
    if args.parquet_columns:
        from studio.dataset.parquet_import import parse_mapping

        try:
            parse_mapping(args.parquet_columns, "--parquet_columns")
        except ValueError as exc:
            parser.error(str(exc))
