"""Every training option, declared once.

One row per option: its name, type and default, the trainer's flag, the `studio train` flag,
the help text and the Train-tab widget. From this table come the trainer's parser
(trainer/args.py), `TrainOptions` and the trainer's command line (jobs/launch.py), the
`studio train` flags (cli/train.py) and the Train tab's form (ui/train_form.py).

Spelling: the trainer's flag is the option's name, as DiffSynth-Studio's `train.py` spells it
where we share one (users paste those); `studio train` takes the same word in kebab-case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studio.engine.lora_targets import DEFAULT_TARGETS
from studio.engine.savers import QUANTIZE_CHOICES, saver_help

from . import scoreboard
from .tracker_names import TRACKERS

LR_SCHEDULERS = ("reference", "constant", "constant_with_warmup", "linear", "cosine")
SAME = object()  # the trainer's default is the studio's

# Where an option lives.
RUN = "run"          # a studio option (TrainOptions, studio train, the tab) passed to the trainer
LAUNCH = "launch"    # a studio option for the launch (accelerate, nodes); not a trainer flag
TRAINER = "trainer"  # a trainer flag only: set by the job manager, or for shell users

# The Train tab's sections, in order.
TRAINING, MEMORY, SAMPLES, DEVICES = ("Trainer options", "Memory savers",
                                      "Sample edits at checkpoints", "Devices and nodes")


@dataclass(frozen=True)
class Widget:
    """The Train tab's field: kind is number | integer | text | dropdown | checkbox | tristate
    (auto/on/off for an option that None leaves to the trainer) | lora (a project adapter or a
    file, filled per project)."""
    kind: str
    label: str
    info: str = ""
    section: str = TRAINING
    elem_id: str | None = None
    choices: tuple = ()  # a dropdown's, where the option itself takes any value
    labels: dict = field(default_factory=dict)  # a dropdown's words for its choices


@dataclass(frozen=True)
class Option:
    name: str
    kind: type
    default: Any
    help: str = ""
    where: str = RUN
    trainer_default: Any = SAME
    choices: tuple = ()
    # "zero": 0 means not set (the tab's number fields cannot be empty); None is always unset.
    unset: str = ""
    always: bool = False     # always written on the trainer's command line (the recipe's values)
    yields_to: str = ""      # not passed while this other option is set (it wins)
    flag: str = ""           # the trainer's flag when it is not the name
    cli: str | None = ""     # the `studio train` flag: "" = the name in kebab-case, None = none
    aliases: tuple = ()      # older `studio train` spellings, still accepted, not shown
    widget: Widget | None = None
    parser: dict = field(default_factory=dict)  # further argparse keywords (metavar, nargs…)

    @property
    def trainer_flag(self) -> str:
        return "--" + (self.flag or self.name)

    @property
    def cli_flag(self) -> str | None:
        return None if self.cli is None else self.cli or "--" + self.name.replace("_", "-")

    @property
    def on_trainer(self) -> Any:
        """The value the trainer takes when its flag is not given."""
        return self.default if self.trainer_default is SAME else self.trainer_default

    def is_unset(self, value) -> bool:
        return value is None or value == "" or (self.unset == "zero" and value == 0)


def _opt(name, kind, default, help="", **more) -> Option:
    return Option(name, kind, default, help, **more)


OPTIONS: tuple[Option, ...] = (
    _opt("model", str, "demo", "model folder in diffusers layout, or 'demo' for the demo model",
         flag="model_path", cli="--model", always=True),
    # Data (the trainer's own; the job manager sets them).
    _opt("dataset_base_path", str, None, "dataset folder (holds images/); with --dataset_parquet "
         "optional, for its metadata_validation.csv and the default cache", where=TRAINER),
    _opt("dataset_metadata_path", str, None,
         "metadata_edit.csv (default: <dataset_base_path>/metadata_edit.csv)", where=TRAINER),
    _opt("dataset_parquet", str, None,
         "train on parquet shards read in place instead of metadata_edit.csv: a file, every "
         "*.parquet under a folder, or a glob (quote it); UltraEdit, InstructPix2Pix and "
         "MagicBrush columns are found, other layouts need --parquet_columns; rows that cannot "
         "train are skipped and named in the log", where=TRAINER,
         parser=dict(metavar="FILE|DIR|GLOB")),
    _opt("parquet_columns", str, None,
         "the parquet columns holding the source image, the edited target and the instruction "
         "(and id=COL for sample ids)", where=TRAINER,
         parser=dict(metavar="source=COL,target=COL,prompt=COL")),
    _opt("validation_metadata_path", str, None, "validation pairs (default: "
         "<dataset_base_path>/metadata_validation.csv if it exists)", where=TRAINER),
    _opt("output_path", str, "./models/train", where=TRAINER),
    _opt("cache_path", str, None,
         "encoded-pair cache (default: <dataset_base_path>/.studio_cache, or for a parquet run "
         "without it <output_path>/.studio_cache: give one to share encodings between runs)",
         where=TRAINER),
    _opt("cache", bool, True, "keep encoded pairs in the cache (--no-cache encodes every pair at "
         "every step: slow, for comparison)", where=TRAINER),
    _opt("encode_only", bool, False, "encode the pairs (training and validation) into the cache, "
         "then exit: a later run with the same model and settings encodes nothing", where=TRAINER),
    _opt("resume", bool, False, "continue from the last checkpoint under --output_path",
         where=TRAINER),
    _opt("height", int, None, "fixed target height (with --width)", where=TRAINER),
    _opt("width", int, None, "fixed target width (with --height)", where=TRAINER),
    _opt("compile_transformer", str, None, "torch.compile each transformer block (opt-in; the "
         "first steps pay the compile)", where=TRAINER,
         choices=("inductor", "aot_eager", "eager"), parser=dict(nargs="?", const="inductor")),
    _opt("validation_loss", bool, True, "at the start and at each checkpoint, the loss on (up to "
         "32) validation pairs at fixed timesteps and noise, in <output>/validation.jsonl",
         where=TRAINER),
    # Length and checkpoints.
    _opt("max_steps", int, 20, "stop after this many optimizer steps", trainer_default=None,
         unset="zero", widget=Widget("integer", "Max steps", "0 = whole epochs")),
    _opt("num_epochs", int, 1, always=True, widget=Widget("integer", "Epochs")),
    _opt("save_steps", int, 10, "save a LoRA every N steps (default: at the end of each epoch; "
         "wins over --num_checkpoints)", trainer_default=None, unset="zero",
         widget=Widget("integer", "Save every N steps", "0 = use 'Checkpoints per run'")),
    _opt("num_checkpoints", int, 10, "without --save_steps: save N LoRAs over the run, every "
         "ceil(steps/N) steps (default: at the end of each epoch)", trainer_default=None,
         unset="zero", aliases=("--checkpoints",), yields_to="save_steps",
         widget=Widget("integer", "Checkpoints per run", "when 'Save every N steps' is 0: this "
                       "many saves spread over the run (default 10); 0 = at each epoch's end")),
    _opt("keep_checkpoints", int, None, "keep the last N step LoRAs plus the best by "
         "--keep_best_by, deleting the others as the run goes (default: keep all; "
         "final.safetensors and the resume state are never deleted)", unset="zero",
         widget=Widget("integer", "Keep last N checkpoints",
                       "plus the best (below); older ones are deleted as the run goes. 0 = keep all")),
    _opt("keep_best_by", str, scoreboard.VAL_LOSS, "what 'best' means for --keep_checkpoints: "
         "the validation loss, or a scoreboard metric of the sample edits (e.g. ssim, "
         "pixel_shift)", choices=tuple(scoreboard.CHOICES),
         widget=Widget("dropdown", "Best checkpoint by", "validation loss, or a scoreboard metric",
                       labels=scoreboard.LABELS)),
    _opt("report_to", str, "none", "also log to this experiment tracker (rank 0, through "
         "accelerate): tensorboard writes into <output_path>/tensorboard; wandb runs offline "
         "without WANDB_API_KEY; mlflow logs to <output_path>/mlruns unless MLFLOW_TRACKING_URI "
         "is set. Each needs its library (requirements-trackers.txt)", choices=TRACKERS,
         widget=Widget("dropdown", "Experiment tracker", "tensorboard: event files in the run "
                       "folder; wandb offline without a key; each needs its library "
                       "(requirements-trackers.txt)")),
    # The LoRA and the optimizer.
    _opt("lora_rank", int, 32, always=True,
         widget=Widget("integer", "LoRA rank", "the recipe uses 32")),
    _opt("lora_alpha", float, None, "default: the rank", unset="zero",
         widget=Widget("number", "LoRA alpha", "0 = same as rank")),
    _opt("lora_target_modules", str, DEFAULT_TARGETS, "comma-separated LoRA target modules "
         "(default: the recipe's)", aliases=("--lora-targets",),
         widget=Widget("text", "LoRA target modules", "comma-separated; the recipe's by default")),
    _opt("lora_checkpoint", str, "", "start from this LoRA: a file (diffusers, DiffSynth or "
         "ComfyUI keys), or in the studio a project adapter's id (adapters list)",
         trainer_default=None, aliases=("--init-lora",),
         widget=Widget("lora", "Start from LoRA", "a project adapter or a LoRA file; empty = new",
                       elem_id="train-init-lora")),
    _opt("learning_rate", float, 1e-4, always=True,
         widget=Widget("number", "Learning rate", "AdamW, the recipe uses 1e-4")),
    _opt("lr_scheduler", str, "reference", "reference: DiffSynth's (lr/3 for 5 steps, then "
         "constant); the others are diffusers' get_scheduler over the run's steps",
         choices=LR_SCHEDULERS,
         widget=Widget("dropdown", "LR schedule", "reference: lr/3 for 5 steps, then constant")),
    _opt("lr_warmup_steps", int, 0, "linear warm-up steps (not with 'reference' or 'constant')",
         widget=Widget("integer", "Warm-up steps", "with constant_with_warmup, linear, cosine")),
    _opt("weight_decay", float, 0.01, always=True, widget=Widget("number", "Weight decay")),
    _opt("max_pixels", int, 1024 * 1024, "target images larger than this are scaled down "
         "(dynamic resolution)", always=True,
         widget=Widget("integer", "Max pixels", "target area; 1048576 = 1 MP, MindSpeed uses 262144")),
    _opt("edit_image_auto_resize", bool, True, "resize the edit (input) image to ~1 MP, sides "
         "multiples of 32, as the reference and the diffusers pipelines do; off: at the "
         "target's max_pixels sizing",
         widget=Widget("checkbox", "Edit image at ~1 MP", "as the reference; off: at the "
                       "target's size (less memory)", elem_id="train-edit-auto-resize")),
    _opt("dataset_repeat", int, 1, "times each pair is seen per epoch", always=True,
         widget=Widget("integer", "Dataset repeat")),
    _opt("gradient_accumulation_steps", int, 1, always=True,
         widget=Widget("integer", "Gradient accumulation")),
    _opt("max_grad_norm", float, None, "clip the gradient norm (off by default, as in the "
         "reference; DeepSpeed runs clip with the config's gradient_clipping, 1.0 in the "
         "recipe's)", unset="zero",
         widget=Widget("number", "Clip gradient norm", "0 = off (ZeRO-2 runs clip at 1.0, as the seed)")),
    _opt("seed", int, 0, "the random seed of the run", always=True,
         widget=Widget("integer", "Seed")),
    _opt("mixed_precision", str, "auto", "auto: bf16 on CUDA/NPU, fp32 on CPU",
         choices=("auto", "no", "bf16", "fp16"), always=True,
         widget=Widget("dropdown", "Precision", "auto: bf16 on GPU/NPU, fp32 on CPU")),
    _opt("use_gradient_checkpointing", bool, None, "recompute each block's activations in "
         "backward (default: on for CUDA/NPU, as the reference recipe, off on CPU)",
         aliases=("--gradient-checkpointing",),
         widget=Widget("tristate", "Gradient checkpointing",
                       "less memory, ~30% slower; auto: on for GPU/NPU, off on CPU")),
    # Memory savers (studio/engine/savers.py).
    _opt("fp8_base", bool, False, saver_help("fp8_base"),
         widget=Widget("checkbox", "fp8 base weights", "half the transformer's memory; each "
                       "layer pays a cast", section=MEMORY)),
    _opt("quantize_base", str, "none", saver_help("quantize_base"), choices=QUANTIZE_CHOICES,
         widget=Widget("dropdown", "Quantized base", "int8 (torchao, bf16 only): like fp8, "
                       "QLoRA-style", section=MEMORY)),
    _opt("offload_blocks", int, 0, saver_help("offload_blocks"),
         widget=Widget("integer", "Blocks offloaded to host memory", "streamed layer by layer "
                       "with prefetch; slower the more blocks", section=MEMORY)),
    _opt("text_encoder_offload", bool, False, saver_help("text_encoder_offload"),
         widget=Widget("checkbox", "Offload the text encoder", "while encoding: ~15 GB less on "
                       "the card", section=MEMORY)),
    _opt("fp8_text_encoder", bool, False, saver_help("fp8_text_encoder"),
         widget=Widget("checkbox", "fp8 text encoder", "while encoding; encodings change "
                       "slightly", section=MEMORY)),
    _opt("ignore_memory_plan", bool, False, "start even when the memory plan says the run will "
         "not fit", widget=Widget("checkbox", "Ignore the memory plan", "start even if the plan "
                                  "says it will not fit", section=MEMORY)),
    # Sample edits of the validation pairs (rank 0 writes them under <output>/samples/).
    _opt("sample_steps", int, None, "render sample edits every N steps (default: at each "
         "checkpoint; 0: never)",
         widget=Widget("integer", "Sample every N steps", "empty = at each checkpoint, 0 = never",
                       section=SAMPLES)),
    _opt("max_samples", int, 4, "sample edits per checkpoint (the first N validation pairs)",
         always=True, widget=Widget("integer", "Validation pairs to sample", "mark pairs as "
                                    "validation in the Dataset tab", section=SAMPLES)),
    _opt("sample_inference_steps", int, 8, "denoising steps per sample edit", always=True,
         widget=Widget("integer", "Denoising steps per sample", "at least 2", section=SAMPLES)),
    _opt("sample_true_cfg_scale", float, 1.0, "true CFG for sample edits (1 = off, twice as "
         "fast)", always=True, aliases=("--sample-cfg",),
         widget=Widget("number", "Sample CFG scale", "1 = off, twice as fast", section=SAMPLES)),
    _opt("sample_lora", str, "", "a few-step LoRA file stacked under the trained LoRA in the "
         "sample edits, to preview what a deployment with it shows (set the steps and CFG it "
         "was made for)", trainer_default=None,
         widget=Widget("text", "Few-step LoRA under the previews", "a LoRA file (e.g. Lightning) "
                       "stacked under the run's; set the steps and CFG it was made for",
                       section=SAMPLES)),
    _opt("sample_lora_strength", float, 1.0, "strength of --sample_lora (0 to 2)",
         widget=Widget("number", "Its strength", section=SAMPLES)),
    # Where and how it runs.
    _opt("device", str, "cpu", "cpu keeps the run on the CPU; cuda/npu check where accelerate "
         "put it", trainer_default=None,
         widget=Widget("dropdown", "Device", section=DEVICES, choices=("cpu", "cuda", "npu"))),
    _opt("mode", str, "single", "single, ddp (data parallel) or zero2 (DeepSpeed ZeRO-2)",
         where=LAUNCH, choices=("single", "ddp", "zero2"),
         widget=Widget("dropdown", "Distribution", "ddp: data parallel; zero2: DeepSpeed ZeRO-2",
                       section=DEVICES)),
    _opt("processes_per_node", int, 1, "devices (processes) per node", where=LAUNCH,
         aliases=("--devices-per-node",),
         widget=Widget("integer", "Devices per node", section=DEVICES)),
    _opt("num_machines", int, 1, "nodes", where=LAUNCH, aliases=("--nodes",),
         widget=Widget("integer", "Nodes", section=DEVICES)),
    _opt("machine_rank", int, 0, "this node's rank", where=LAUNCH, aliases=("--node-rank",),
         widget=Widget("integer", "This node's rank", section=DEVICES)),
    _opt("main_ip", str, "", "node 0's address (needed with several nodes)", where=LAUNCH,
         widget=Widget("text", "Main node IP", "needed with several nodes", section=DEVICES)),
    _opt("main_port", int, 29500, "node 0's port", where=LAUNCH,
         widget=Widget("integer", "Main port", section=DEVICES)),
    _opt("launcher", str, "manual", "how the other nodes start: manual (you paste a command), "
         "slurm (sbatch) or ssh (--hosts)", where=LAUNCH, choices=("manual", "slurm", "ssh"),
         widget=Widget("dropdown", "Start other nodes by", "manual: you paste a command; slurm: "
                       "sbatch; ssh: hosts", section=DEVICES)),
    _opt("hosts", str, "", "ssh: one host per node, comma-separated, node 0 first", where=LAUNCH,
         widget=Widget("text", "ssh hosts", "one per node, comma-separated, node 0 first",
                       section=DEVICES)),
    _opt("join_timeout", int, 600, "seconds for every node to join before the run fails",
         where=LAUNCH, widget=Widget("integer", "Join timeout (s)", "the run fails if a node has "
                                     "not joined by then", section=DEVICES)),
    _opt("cann_set_env", str, "", "NPU: CANN's set_env.sh to source (default: the usual places)",
         where=LAUNCH, widget=Widget("text", "CANN set_env.sh (NPU)", "default: "
                                     "/usr/local/Ascend/ascend-toolkit/set_env.sh",
                                     section=DEVICES)),
    # Filled by the studio, not typed: extra environment variables (the tab's own text box),
    # and the project's attached parquet source as trainer flags, fixed at submit so that a
    # resume reads the same rows (studio/jobs/sources.py).
    _opt("env", dict, None, where=LAUNCH, cli=None),
    _opt("source_args", list, None, where=LAUNCH, cli=None),
)
BY_NAME = {o.name: o for o in OPTIONS}


def studio_options() -> tuple[Option, ...]:
    """The options a studio run stores (TrainOptions' fields)."""
    return tuple(o for o in OPTIONS if o.where != TRAINER)


def trainer_options() -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if o.where != LAUNCH)


def form_options() -> tuple[Option, ...]:
    """The Train tab's fields, section by section, in the table's order within each."""
    sections = (TRAINING, MEMORY, SAMPLES, DEVICES)
    shown = [o for o in OPTIONS if o.widget]
    return tuple(sorted(shown, key=lambda o: sections.index(o.widget.section)))


def trainer_flags(values: dict) -> list[str]:
    """The trainer's command-line flags for these studio option values: each one that is set
    and differs from the trainer's own default, and the recipe's values always."""
    args: list[str] = []
    for opt in OPTIONS:
        if opt.where != RUN or opt.name not in values:
            continue
        value = values[opt.name]
        if opt.yields_to and not BY_NAME[opt.yields_to].is_unset(values.get(opt.yields_to)):
            continue
        if opt.kind is bool:
            if value is not None and value != opt.on_trainer:
                args.append(opt.trainer_flag if value else f"--no-{opt.flag or opt.name}")
        elif not opt.is_unset(value) and (opt.always or value != opt.on_trainer):
            args += [opt.trainer_flag, str(value)]
    return args
