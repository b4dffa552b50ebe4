"""What a training run executes: trainer options -> accelerate config, command and environment.

Pure functions, so the Train tab can show the exact command before anything starts.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..trainer.accelerate_config import make_config
from ..trainer.args import DEFAULT_TARGETS


@dataclass
class TrainOptions:
    model: str = "demo"
    max_steps: int | None = 20
    num_epochs: int = 1
    save_steps: int | None = 10
    # Without save_steps: this many checkpoints spread over the run (the trainer alone would
    # save at every epoch's end: 100 files for 10 pairs and 1,000 steps). None: epoch ends.
    num_checkpoints: int | None = 10
    keep_checkpoints: int | None = None  # the last N + the best by keep_best_by; None: all
    keep_best_by: str = "val_loss"  # or a scoreboard metric (studio/trainer/scoreboard.py)
    report_to: str = "none"         # none | tensorboard | wandb | mlflow | trackio
    lora_rank: int = 32
    lora_alpha: float | None = None
    lora_target_modules: str = DEFAULT_TARGETS
    lora_checkpoint: str = ""       # start from this LoRA: a file, or a project adapter's id
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    lr_scheduler: str = "reference"  # DiffSynth's; or diffusers' constant/…/linear/cosine
    lr_warmup_steps: int = 0
    max_pixels: int = 1024 * 1024
    edit_image_auto_resize: bool = True  # the edit image at ~1 MP, as the reference
    dataset_repeat: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = None  # None: off, except ZeRO-2 runs (the recipe's 1.0)
    use_gradient_checkpointing: bool | None = None  # None: on for cuda/npu, off on cpu
    # Memory savers (studio/engine/savers.py), trainer flags of the same names.
    fp8_base: bool = False
    quantize_base: str = "none"     # none | int8
    offload_blocks: int = 0
    text_encoder_offload: bool = False
    fp8_text_encoder: bool = False
    ignore_memory_plan: bool = False  # start even when the plan says it will not fit
    seed: int = 0
    mixed_precision: str = "auto"
    # Sample edits of the validation pairs (trainer flags of the same names).
    sample_steps: int | None = None  # None: at each checkpoint; 0: never
    sample_inference_steps: int = 8
    sample_true_cfg_scale: float = 1.0
    sample_lora: str = ""           # a few-step LoRA under the run's in the previews
    sample_lora_strength: float = 1.0
    max_samples: int = 4
    # Where and how it runs.
    device: str = "cpu"             # cpu | cuda | npu
    mode: str = "single"            # single | ddp | zero2
    processes_per_node: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_ip: str = ""
    main_port: int = 29500
    launcher: str = "manual"        # several nodes: manual | slurm | ssh (studio/jobs/multinode.py)
    hosts: str = ""                 # ssh: one host per node, comma-separated, node 0 first
    join_timeout: int = 600         # seconds for every node to join before the run fails
    env: dict = field(default_factory=dict)  # extra variables (e.g. edited Ascend settings)
    # The project's attached parquet source as trainer flags, fixed at submit so that a
    # resume reads the same rows (studio/jobs/sources.py).
    source_args: list = field(default_factory=list)
    cann_set_env: str = ""          # NPU: CANN's set_env.sh to source (default: the usual places)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        if "num_checkpoints" not in data:  # a run stored before it existed keeps its cadence
            data = {**data, "num_checkpoints": None}
        return cls(**data)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Starting points in the Train tab; every field stays editable. The card presets are the
# fastest savers that the memory plan says fit each card at the seed's setting (512x512
# targets, max_pixels 262144, with 1 MP edit images), checked by tests/test_presets.py.
_GPU_RUN = dict(device="cuda", mode="single", processes_per_node=1, max_steps=2000,
                save_steps=250, lora_rank=32, max_pixels=262144, mixed_precision="bf16",
                use_gradient_checkpointing=True)
TRAIN_PRESETS: dict[str, dict] = {
    # Edit images at the targets' size: the random demo model learns nothing from 1 MP ones,
    # and encoding them takes seconds per pair on a CPU.
    "Demo on CPU": dict(device="cpu", mode="single", processes_per_node=1, max_steps=20,
                        save_steps=10, lora_rank=4, max_pixels=64 * 64, mixed_precision="no",
                        use_gradient_checkpointing=False, edit_image_auto_resize=False),
    "One 24 GB GPU": dict(_GPU_RUN, fp8_base=True, offload_blocks=20),
    "One 32 GB GPU": dict(_GPU_RUN, fp8_base=True),
    "One 48 GB GPU": dict(_GPU_RUN, fp8_base=True),
    "One 80 GB GPU": dict(_GPU_RUN),
    "One Ascend 910B (64 GB)": dict(_GPU_RUN, device="npu"),
    # The reference recipe (MindSpeed-MM): 8 Ascend cards, DeepSpeed ZeRO-2, bf16, 262144 pixels.
    "Seed: 8 Ascend NPUs, ZeRO-2": dict(device="npu", mode="zero2", processes_per_node=8,
                                         max_steps=None, num_epochs=1, save_steps=500,
                                         lora_rank=32, max_pixels=262144, mixed_precision="bf16",
                                         use_gradient_checkpointing=True),
}
# The card each preset is sized for, in GB (its memory before the driver takes its share).
PRESET_CARD_GB = {"One 24 GB GPU": 24, "One 32 GB GPU": 32, "One 48 GB GPU": 48,
                  "One 80 GB GPU": 80, "One Ascend 910B (64 GB)": 64,
                  "Seed: 8 Ascend NPUs, ZeRO-2": 64}


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
    args = ["--model_path", opts.model, "--dataset_base_path", str(dataset_dir),
            "--output_path", str(output_dir), "--num_epochs", str(opts.num_epochs),
            "--lora_rank", str(opts.lora_rank), "--learning_rate", str(opts.learning_rate),
            "--weight_decay", str(opts.weight_decay), "--max_pixels", str(opts.max_pixels),
            "--dataset_repeat", str(opts.dataset_repeat), "--seed", str(opts.seed),
            "--gradient_accumulation_steps", str(opts.gradient_accumulation_steps),
            "--mixed_precision", opts.mixed_precision]
    if opts.max_steps:
        args += ["--max_steps", str(opts.max_steps)]
    if not opts.edit_image_auto_resize:
        args.append("--no-edit_image_auto_resize")
    if opts.save_steps:
        args += ["--save_steps", str(opts.save_steps)]
    elif opts.num_checkpoints:
        args += ["--num_checkpoints", str(opts.num_checkpoints)]
    if opts.keep_checkpoints:
        args += ["--keep_checkpoints", str(opts.keep_checkpoints), "--keep_best_by", opts.keep_best_by]
    if opts.report_to != "none":
        args += ["--report_to", opts.report_to]
    if opts.lora_alpha:
        args += ["--lora_alpha", str(opts.lora_alpha)]
    if opts.lora_target_modules.replace(" ", "") != DEFAULT_TARGETS:
        args += ["--lora_target_modules", opts.lora_target_modules.replace(" ", "")]
    if opts.lora_checkpoint:
        args += ["--lora_checkpoint", opts.lora_checkpoint]
    if opts.max_grad_norm:
        args += ["--max_grad_norm", str(opts.max_grad_norm)]
    if opts.lr_scheduler != "reference" or opts.lr_warmup_steps:
        args += ["--lr_scheduler", opts.lr_scheduler, "--lr_warmup_steps", str(opts.lr_warmup_steps)]
    if opts.use_gradient_checkpointing is not None:
        args.append("--use_gradient_checkpointing" if opts.use_gradient_checkpointing
                    else "--no-use_gradient_checkpointing")
    if opts.fp8_base:
        args.append("--fp8_base")
    if opts.quantize_base != "none":
        args += ["--quantize_base", opts.quantize_base]
    if opts.offload_blocks:
        args += ["--offload_blocks", str(opts.offload_blocks)]
    for flag in ("text_encoder_offload", "fp8_text_encoder", "ignore_memory_plan"):
        if getattr(opts, flag):
            args.append(f"--{flag}")
    if opts.sample_steps is not None:
        args += ["--sample_steps", str(opts.sample_steps)]
    args += ["--sample_inference_steps", str(opts.sample_inference_steps),
             "--sample_true_cfg_scale", str(opts.sample_true_cfg_scale),
             "--max_samples", str(opts.max_samples)]
    if opts.sample_lora:
        args += ["--sample_lora", str(Path(opts.sample_lora).expanduser()),
                 "--sample_lora_strength", str(opts.sample_lora_strength)]
    if opts.device == "cpu":
        args += ["--device", "cpu"]
    args += [str(a) for a in opts.source_args]
    if cache_dir is not None:
        args += ["--cache_path", str(cache_dir)]
    if resume:
        args.append("--resume")
    return args


def launch_command(opts: TrainOptions, config_file: Path, dataset_dir: Path, output_dir: Path,
                   resume: bool = False, python: str = sys.executable,
                   cache_dir: Path | None = None) -> list[str]:
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "-m", "studio.trainer", *trainer_args(opts, dataset_dir, output_dir, resume, cache_dir)]


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
