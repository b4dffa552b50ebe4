"""What a training run executes: trainer options -> accelerate config, command and environment.

Pure functions, so the Train tab can show the exact command before anything starts.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path

import psutil

from ..trainer.accelerate_config import make_config
from ..trainer.options import studio_options, trainer_flags


def _field(opt) -> tuple:
    if opt.kind in (dict, list):
        return opt.name, opt.kind, dataclasses.field(default_factory=opt.kind)
    return opt.name, opt.kind | None if opt.default is None else opt.kind, opt.default


def _from_dict(cls, data: dict) -> "TrainOptions":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    if "num_checkpoints" not in data:  # a run stored before it existed keeps its cadence
        data = {**data, "num_checkpoints": None}
    return cls(**data)


# A run's options: one field per studio option of the table (trainer/options.py), with its
# default. Runs store them as a dict (as_dict), read back with from_dict.
TrainOptions = dataclasses.make_dataclass(
    "TrainOptions", [_field(o) for o in studio_options()],
    namespace={"from_dict": classmethod(_from_dict), "as_dict": dataclasses.asdict,
               "__module__": __name__})


def devices_key(opts: TrainOptions) -> str:
    """Runs with the same key compete for the same devices and are queued one after another."""
    return opts.device


def accelerate_config(opts: TrainOptions) -> dict:
    return make_config(mode=opts.mode, num_processes=opts.processes_per_node * opts.num_machines,
                       device=opts.device,
                       mixed_precision=None if opts.mixed_precision == "auto" else opts.mixed_precision,
                       gradient_accumulation_steps=opts.gradient_accumulation_steps,
                       gradient_clipping=opts.max_grad_norm or 1.0,
                       num_machines=opts.num_machines, machine_rank=opts.machine_rank,
                       main_process_ip=main_address(opts), main_process_port=opts.main_port)


def hosts(opts: TrainOptions) -> list[str]:
    """The ssh launcher's hosts, node 0 first."""
    return [h.strip() for h in opts.hosts.replace("\n", ",").split(",") if h.strip()]


def main_address(opts: TrainOptions) -> str | None:
    """Node 0's address: given, else the first ssh host; under Slurm it is only known inside
    the allocation, so each node's command line passes it ($MAIN_IP) and the file holds a
    placeholder."""
    if opts.main_ip:
        return opts.main_ip
    if opts.launcher == "ssh" and hosts(opts):
        return hosts(opts)[0]
    return "set-by-slurm" if opts.launcher == "slurm" and opts.num_machines > 1 else None


def trainer_args(opts: TrainOptions, dataset_dir: Path, output_dir: Path, resume: bool,
                 cache_dir: Path | None = None) -> list[str]:
    args = ["--dataset_base_path", str(dataset_dir), "--output_path", str(output_dir),
            *trainer_flags(opts.as_dict()), *map(str, opts.source_args)]
    if cache_dir is not None:
        args += ["--cache_path", str(cache_dir)]
    if resume:
        args.append("--resume")
    return args


def launch_command(opts: TrainOptions, config_file: Path, dataset_dir: Path, output_dir: Path,
                   resume: bool = False, python: str = sys.executable,
                   cache_dir: Path | None = None) -> list[str]:
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            *cpu_threads(opts), "-m", "studio.trainer",
            *trainer_args(opts, dataset_dir, output_dir, resume, cache_dir)]


def cpu_threads(opts: TrainOptions) -> list[str]:
    """On CPU, the threads per process that accelerate would pick itself (the physical cores
    shared by the node's processes), given so that it does not warn in every run log."""
    if opts.device != "cpu" or "OMP_NUM_THREADS" in {**os.environ, **opts.env}:
        return []
    cores = psutil.cpu_count(logical=False) or 1
    return ["--num_cpu_threads_per_process", str(max(1, cores // opts.processes_per_node))]


def launch_env(opts: TrainOptions) -> dict[str, str]:
    """Variables the run needs on top of the studio's own environment."""
    env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if opts.device == "cpu" and opts.mode != "zero2":
        # Several CPU processes go through the GPU launcher with this set; under ZeRO-2 it
        # would quietly turn the run into plain DDP, so DeepSpeed runs go without it.
        env["ACCELERATE_USE_CPU"] = "1"
    if opts.device == "npu":  # the recipe's Ascend variables with the user's edits ("" drops one)
        from studio.engine.npu.env import npu_env

        env.update(npu_env(opts.env))
    else:
        env.update({k: str(v) for k, v in opts.env.items()})
    return env


def shell_line(command: list[str], env: dict[str, str]) -> str:
    """The command as one pasteable shell line."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())),
                     *map(shlex.quote, command)])
