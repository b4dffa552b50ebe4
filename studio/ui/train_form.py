"""The Train tab's form: one widget per TrainOptions field, and the conversions between
the widgets' values and TrainOptions."""
from __future__ import annotations

import gradio as gr

from ..engine.savers import QUANTIZE_CHOICES
from ..trainer.args import LR_SCHEDULERS
from ..trainer.scoreboard import CHOICES, LABELS
from ..trainer.tracker_names import TRACKERS
from ..jobs.launch import TRAIN_PRESETS, TrainOptions

# Form fields by accordion, (TrainOptions field, factory(value)); FIELDS is the order of the
# event inputs.
TRAINER_FIELDS = [
    ("max_steps", lambda v: gr.Number(v, label="Max steps", precision=0, info="0 = whole epochs")),
    ("num_epochs", lambda v: gr.Number(v, label="Epochs", precision=0)),
    ("save_steps", lambda v: gr.Number(v, label="Save every N steps", precision=0,
                                       info="0 = use 'Checkpoints per run'")),
    ("num_checkpoints", lambda v: gr.Number(v, label="Checkpoints per run", precision=0,
                                            info="when 'Save every N steps' is 0: this many "
                                                 "saves spread over the run (default 10); "
                                                 "0 = at each epoch's end")),
    ("keep_checkpoints", lambda v: gr.Number(v, label="Keep last N checkpoints", precision=0,
                                             info="plus the best (below); older ones "
                                                  "are deleted as the run goes. 0 = keep all")),
    ("keep_best_by", lambda v: gr.Dropdown([(LABELS[m], m) for m in CHOICES], value=v,
                                           label="Best checkpoint by",
                                           info="validation loss, or a scoreboard metric")),
    ("report_to", lambda v: gr.Dropdown(list(TRACKERS), value=v, label="Experiment tracker",
                                        info="tensorboard: event files in the run folder; "
                                             "wandb offline without a key; each needs its "
                                             "library (requirements-trackers.txt)")),
    ("lora_rank", lambda v: gr.Number(v, label="LoRA rank", precision=0, info="the recipe uses 32")),
    ("lora_alpha", lambda v: gr.Number(v, label="LoRA alpha", info="0 = same as rank")),
    ("lora_target_modules", lambda v: gr.Textbox(v, label="LoRA target modules",
                                                 info="comma-separated; the recipe's by default")),
    ("lora_checkpoint", lambda v: gr.Dropdown([], value=v or None, allow_custom_value=True,
                                              label="Start from LoRA", elem_id="train-init-lora",
                                              info="a project adapter or a LoRA file; empty = new")),
    ("learning_rate", lambda v: gr.Number(v, label="Learning rate", info="AdamW, the recipe uses 1e-4")),
    ("lr_scheduler", lambda v: gr.Dropdown(list(LR_SCHEDULERS), value=v, label="LR schedule",
                                           info="reference: lr/3 for 5 steps, then constant")),
    ("lr_warmup_steps", lambda v: gr.Number(v, label="Warm-up steps", precision=0,
                                            info="with constant_with_warmup, linear, cosine")),
    ("weight_decay", lambda v: gr.Number(v, label="Weight decay")),
    ("max_pixels", lambda v: gr.Number(v, label="Max pixels", precision=0,
                                       info="target area; 1048576 = 1 MP, MindSpeed uses 262144")),
    ("edit_image_auto_resize", lambda v: gr.Checkbox(v, label="Edit image at ~1 MP",
                                                     elem_id="train-edit-auto-resize",
                                                     info="as the reference; off: at the "
                                                          "target's size (less memory)")),
    ("dataset_repeat", lambda v: gr.Number(v, label="Dataset repeat", precision=0)),
    ("gradient_accumulation_steps", lambda v: gr.Number(v, label="Gradient accumulation",
                                                        precision=0)),
    ("max_grad_norm", lambda v: gr.Number(v, label="Clip gradient norm",
                                          info="0 = off (ZeRO-2 runs clip at 1.0, as the seed)")),
    ("seed", lambda v: gr.Number(v, label="Seed", precision=0)),
    ("mixed_precision", lambda v: gr.Dropdown(["auto", "no", "bf16", "fp16"], value=v,
                                              label="Precision",
                                              info="auto: bf16 on GPU/NPU, fp32 on CPU")),
    ("use_gradient_checkpointing", lambda v: gr.Radio(["auto", "on", "off"], value=v,
                                                      label="Gradient checkpointing",
                                                      info="less memory, ~30% slower; auto: on "
                                                           "for GPU/NPU, off on CPU")),
]
MEMORY_FIELDS = [
    ("fp8_base", lambda v: gr.Checkbox(v, label="fp8 base weights",
                                       info="half the transformer's memory; each layer pays a cast")),
    ("quantize_base", lambda v: gr.Dropdown(list(QUANTIZE_CHOICES), value=v, label="Quantized base",
                                            info="int8 (torchao, bf16 only): like fp8, QLoRA-style")),
    ("offload_blocks", lambda v: gr.Number(v, label="Blocks offloaded to host memory", precision=0,
                                           info="streamed layer by layer with prefetch; slower "
                                                "the more blocks")),
    ("text_encoder_offload", lambda v: gr.Checkbox(v, label="Offload the text encoder",
                                                   info="while encoding: ~15 GB less on the card")),
    ("fp8_text_encoder", lambda v: gr.Checkbox(v, label="fp8 text encoder",
                                               info="while encoding; encodings change slightly")),
    ("ignore_memory_plan", lambda v: gr.Checkbox(v, label="Ignore the memory plan",
                                                 info="start even if the plan says it will not fit")),
]
SAMPLE_FIELDS = [
    ("sample_steps", lambda v: gr.Number(v, label="Sample every N steps", precision=0,
                                         info="empty = at each checkpoint, 0 = never")),
    ("max_samples", lambda v: gr.Number(v, label="Validation pairs to sample", precision=0,
                                        info="mark pairs as validation in the Dataset tab")),
    ("sample_inference_steps", lambda v: gr.Number(v, label="Denoising steps per sample",
                                                   precision=0, info="at least 2")),
    ("sample_true_cfg_scale", lambda v: gr.Number(v, label="Sample CFG scale",
                                                  info="1 = off, twice as fast")),
    ("sample_lora", lambda v: gr.Textbox(v, label="Few-step LoRA under the previews",
                                         info="a LoRA file (e.g. Lightning) stacked under the "
                                              "run's; set the steps and CFG it was made for")),
    ("sample_lora_strength", lambda v: gr.Number(v, label="Its strength", minimum=0, maximum=2)),
]
DEVICE_FIELDS = [
    ("device", lambda v: gr.Dropdown(["cpu", "cuda", "npu"], value=v, label="Device")),
    ("mode", lambda v: gr.Dropdown(["single", "ddp", "zero2"], value=v, label="Distribution",
                                   info="ddp: data parallel; zero2: DeepSpeed ZeRO-2")),
    ("processes_per_node", lambda v: gr.Number(v, label="Devices per node", precision=0)),
    ("num_machines", lambda v: gr.Number(v, label="Nodes", precision=0)),
    ("machine_rank", lambda v: gr.Number(v, label="This node's rank", precision=0)),
    ("main_ip", lambda v: gr.Textbox(v, label="Main node IP", info="needed with several nodes")),
    ("main_port", lambda v: gr.Number(v, label="Main port", precision=0)),
    ("launcher", lambda v: gr.Dropdown(["manual", "slurm", "ssh"], value=v,
                                       label="Start other nodes by",
                                       info="manual: you paste a command; slurm: sbatch; ssh: hosts")),
    ("hosts", lambda v: gr.Textbox(v, label="ssh hosts",
                                   info="one per node, comma-separated, node 0 first")),
    ("join_timeout", lambda v: gr.Number(v, label="Join timeout (s)", precision=0,
                                         info="the run fails if a node has not joined by then")),
    ("cann_set_env", lambda v: gr.Textbox(v, label="CANN set_env.sh (NPU)",
                                          info="default: /usr/local/Ascend/ascend-toolkit/set_env.sh")),
]
FIELDS = TRAINER_FIELDS + MEMORY_FIELDS + SAMPLE_FIELDS + DEVICE_FIELDS
# Numbers where 0 means "not set" (the trainer's default), and where empty means it.
ZERO_IS_UNSET = ("max_steps", "save_steps", "num_checkpoints", "keep_checkpoints", "lora_alpha",
                 "max_grad_norm")
EMPTY_IS_UNSET = ("sample_steps",)
CHECKPOINTING = {"auto": None, "on": True, "off": False}
FLOATS = ("learning_rate", "weight_decay", "lora_alpha", "max_grad_norm", "sample_true_cfg_scale",
          "sample_lora_strength")


def options_from(model: str, env_text: str, values) -> TrainOptions:
    data = {**TrainOptions().as_dict(), "model": model or "demo"}
    for (name, _), value in zip(FIELDS, values):
        if name in ZERO_IS_UNSET:
            value = value or None
        if value is None and isinstance(data[name], str):  # an emptied text or dropdown
            value = ""
        if name == "use_gradient_checkpointing":
            value = CHECKPOINTING.get(value)
        if isinstance(value, float) and name not in FLOATS:
            value = int(value)
        data[name] = value
    env = {}
    for line in (env_text or "").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise gr.Error(f"environment line {line!r} is not KEY=VALUE")
            env[key.strip()] = value.strip()
    data["env"] = env
    return TrainOptions.from_dict(data)


def ascend_env_text() -> str:
    """The recipe's Ascend variables as editable KEY=VALUE lines (an empty value drops one)."""
    from ..engine.npu.env import OPTIONAL_ENV, SEED_ENV

    return "\n".join([*(f"{k}={v}" for k, v in SEED_ENV.items()),
                      *(f"# {k}={v}" for k, v in OPTIONAL_ENV.items())])


def form_values(options: dict) -> list:
    """The form's field values for these options (the rest at their defaults)."""
    values = {**TrainOptions().as_dict(), **options}
    values["use_gradient_checkpointing"] = {v: k for k, v in CHECKPOINTING.items()}[
        values["use_gradient_checkpointing"]]
    return [0 if values[f] is None and f not in EMPTY_IS_UNSET else values[f] for f, _ in FIELDS]


def preset_values(name: str) -> list:
    return form_values(TRAIN_PRESETS.get(name, {}))
