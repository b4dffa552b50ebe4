"""accelerate config files for the trainer: one device, DDP, DeepSpeed ZeRO-2, several nodes.

    python -m studio.trainer.accelerate_config --mode zero2 --num_processes 8 --device npu \
        --out accelerate_config.yaml
    python -m studio.trainer.accelerate_config --preset ascend-8-zero2 --out accelerate_config.yaml

Then: accelerate launch --config_file accelerate_config.yaml -m studio.trainer ...
For several CPU processes (tests, laptops) accelerate needs ACCELERATE_USE_CPU=1 in the
environment with a multi-process config (docs/design.md): `--cpu` alone runs one process.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

MODES = ("single", "ddp", "zero2")
# The reference recipe (MindSpeed-MM accelerate_config.yaml): 8 Ascend cards, ZeRO-2, bf16,
# gradient clipping 1.0.
CONFIG_PRESETS = {
    "ascend-8-zero2": dict(mode="zero2", num_processes=8, device="npu", mixed_precision="bf16",
                           gradient_clipping=1.0),
    "cuda-8-zero2": dict(mode="zero2", num_processes=8, device="cuda", mixed_precision="bf16",
                         gradient_clipping=1.0),
    "cpu-2-ddp": dict(mode="ddp", num_processes=2, device="cpu", mixed_precision="no"),
}


def make_config(mode: str = "single", num_processes: int = 1, device: str = "cuda",
                mixed_precision: str | None = None, gradient_accumulation_steps: int = 1,
                gradient_clipping: float | None = 1.0, offload_optimizer: str = "none",
                num_machines: int = 1, machine_rank: int = 0, main_process_ip: str | None = None,
                main_process_port: int | None = 29500) -> dict:
    """An accelerate config as a dict. `num_processes` counts all processes on all machines,
    as accelerate expects."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if device not in ("cpu", "cuda", "npu"):
        raise ValueError(f"device must be cpu, cuda or npu, not {device!r}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank {machine_rank} is not in 0..{num_machines - 1}")
    if num_machines > 1 and not main_process_ip:
        raise ValueError("several machines need main_process_ip (the address of machine 0)")
    if mode == "single" and num_processes != 1:
        raise ValueError("mode 'single' runs one process; use ddp or zero2 for more")
    if num_processes % num_machines:
        raise ValueError(f"{num_processes} processes do not split evenly over {num_machines} machines")
    precision = mixed_precision or ("no" if device == "cpu" else "bf16")
    multi = {"cuda": "MULTI_GPU", "npu": "MULTI_NPU", "cpu": "MULTI_GPU"}[device]
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": {"single": "NO", "ddp": multi, "zero2": "DEEPSPEED"}[mode],
        "mixed_precision": precision,
        "num_machines": num_machines,
        "num_processes": num_processes,
        "machine_rank": machine_rank,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        # CPU multi-process runs through the GPU launcher with ACCELERATE_USE_CPU=1 set.
        "use_cpu": device == "cpu" and mode == "single",
    }
    if mode == "zero2":
        ds = {"zero_stage": 2, "gradient_accumulation_steps": gradient_accumulation_steps,
              "offload_optimizer_device": offload_optimizer, "offload_param_device": "none",
              "zero3_init_flag": False}
        if gradient_clipping is not None:
            ds["gradient_clipping"] = gradient_clipping
        if num_machines > 1:
            # One `accelerate launch` per node; accelerate's default would be pdsh over ssh.
            ds["deepspeed_multinode_launcher"] = "standard"
        config["deepspeed_config"] = ds
    if mode != "single" and device != "cpu":
        config["gpu_ids"] = "all"
    if num_machines > 1:
        config["main_process_ip"] = main_process_ip
        config["main_process_port"] = main_process_port
    return config


def to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=True)


def write_config(path: str | Path, config: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(config))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studio.trainer.accelerate_config",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(CONFIG_PRESETS))
    p.add_argument("--mode", choices=MODES)
    p.add_argument("--num_processes", type=int)
    p.add_argument("--device", choices=["cpu", "cuda", "npu"])
    p.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--gradient_accumulation_steps", type=int)
    p.add_argument("--gradient_clipping", type=float)
    p.add_argument("--offload_optimizer", choices=["none", "cpu"])
    p.add_argument("--num_machines", type=int)
    p.add_argument("--machine_rank", type=int)
    p.add_argument("--main_process_ip")
    p.add_argument("--main_process_port", type=int)
    p.add_argument("--out", help="write here (default: print)")
    a = p.parse_args(argv)
    options = dict(CONFIG_PRESETS[a.preset]) if a.preset else {}
    for key in ("mode", "num_processes", "device", "mixed_precision", "gradient_accumulation_steps",
                "gradient_clipping", "offload_optimizer", "num_machines", "machine_rank",
                "main_process_ip", "main_process_port"):
        if getattr(a, key) is not None:
            options[key] = getattr(a, key)
    try:
        config = make_config(**options)
    except ValueError as exc:
        p.error(str(exc))
    if a.out:
        print(f"wrote {write_config(a.out, config)}", file=sys.stderr)
    else:
        sys.stdout.write(to_yaml(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
