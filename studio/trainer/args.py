"""Command-line arguments of `python -m studio.trainer`, built from the option table
(trainer/options.py), and the checks that go across options.

Names follow DiffSynth-Studio's `train.py` (qwen_image_parser) so that the reference recipe's
shell scripts translate flag for flag.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .options import LR_SCHEDULERS, trainer_options  # noqa: F401 - LR_SCHEDULERS re-exported
from .tracker_names import tracker_problem


class _RaisingParser(argparse.ArgumentParser):
    """Reports a bad flag as ValueError, for checks before a run is queued."""

    def error(self, message):
        raise ValueError(message)


def build_parser(cls: type[argparse.ArgumentParser] = argparse.ArgumentParser):
    p = cls(prog="python -m studio.trainer",
            description="Train a Qwen-Image-Edit LoRA (run it under `accelerate launch`).")
    for opt in trainer_options():
        default = opt.on_trainer
        keywords = dict(default=default, help=opt.help or None, **opt.parser)
        if opt.kind is bool:
            # A switch when off by default; on (or left to the trainer) also takes --no-NAME.
            keywords["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        else:
            keywords["type"] = opt.kind
        if opt.choices:
            keywords["choices"] = opt.choices
        p.add_argument(opt.trainer_flag, **keywords)
    # The older spelling of --no-cache, still accepted.
    p.add_argument("--no_cache", dest="cache", action="store_false", help=argparse.SUPPRESS)
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
    if args.encode_only and not args.cache:
        parser.error("--encode_only fills the cache; it cannot go with --no-cache")
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
