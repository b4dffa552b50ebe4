"""Distributed launch on Ascend: the HCCL backend and the seed's 8-card ZeRO-2 preset as data.

The accelerate config files themselves are written by studio.trainer.accelerate_config
(preset "ascend-8-zero2"); this module holds the seed's facts that generator must agree with,
so a test can hold it to them.
"""
from __future__ import annotations

CARDS_PER_NODE = 8  # Atlas 900 A2 PODc: 8 NPUs per node

# Ascend/MindSpeed-MM examples/diffsynth/qwen_image_edit/accelerate_config.yaml (37ccda3),
# without its tpu_* leftovers. accelerate starts HCCL itself for NPU devices.
SEED_ACCELERATE_CONFIG: dict = {
    "compute_environment": "LOCAL_MACHINE",
    "debug": False,
    "deepspeed_config": {
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "offload_optimizer_device": "none",
        "offload_param_device": "none",
        "zero3_init_flag": False,
        "zero_stage": 2,
    },
    "distributed_type": "DEEPSPEED",
    "downcast_bf16": "no",
    "dynamo_backend": "no",
    "machine_rank": 0,
    "main_process_port": 6789,
    "main_training_function": "main",
    "mixed_precision": "bf16",
    "num_machines": 1,
    "num_processes": 8,
    "rdzv_backend": "static",
    "same_network": True,
    "use_cpu": False,
}

_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


def dist_backend(device: str) -> str:
    """The torch.distributed backend for a device ("npu:3" -> "hccl")."""
    kind = str(device).split(":")[0]
    if kind not in _BACKENDS:
        raise ValueError(f"no distributed backend known for device {device!r}")
    return _BACKENDS[kind]


def multinode_fields(num_machines: int, machine_rank: int, main_process_ip: str,
                     main_process_port: int = SEED_ACCELERATE_CONFIG["main_process_port"],
                     deepspeed: bool = True) -> dict:
    """The accelerate config fields for a run over several nodes (run `accelerate launch` on
    each node with its own machine_rank). With DeepSpeed, accelerate otherwise defaults to its
    pdsh launcher (ssh from node 0); "standard" is the one-launch-per-node mode the seed's
    config has commented out."""
    if num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank {machine_rank} is not in 0..{num_machines - 1}")
    if num_machines > 1 and not main_process_ip:
        raise ValueError("several nodes need main_process_ip (the address of node 0)")
    fields = {"num_machines": num_machines, "machine_rank": machine_rank,
              "num_processes": CARDS_PER_NODE * num_machines}
    if num_machines > 1:
        fields.update(main_process_ip=main_process_ip, main_process_port=main_process_port)
        if deepspeed:
            fields["deepspeed_config"] = {"deepspeed_multinode_launcher": "standard"}
    return fields


SEED_PORT = SEED_ACCELERATE_CONFIG["main_process_port"]


def seed_accelerate_config(num_machines: int = 1, machine_rank: int = 0,
                           main_process_ip: str | None = None,
                           main_process_port: int = SEED_PORT) -> dict:
    """The seed's config, scaled to `num_machines` nodes of 8 cards."""
    config = {**SEED_ACCELERATE_CONFIG,
              "deepspeed_config": dict(SEED_ACCELERATE_CONFIG["deepspeed_config"])}
    fields = multinode_fields(num_machines, machine_rank, main_process_ip or "", main_process_port)
    config["deepspeed_config"].update(fields.pop("deepspeed_config", {}))
    config.update(fields)
    return config
