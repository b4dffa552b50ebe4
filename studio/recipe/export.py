"""Exporting a project as the reference recipe: a folder a user copies to an Ascend (or GPU)
cluster and runs with DiffSynth-Studio's train.py, as MindSpeed-MM's
examples/diffsynth/qwen_image_edit/ does, without the studio installed there.

    out/
      train_qwen_image_edit_lora.sh   environment, model_paths, accelerate launch of train.py
      accelerate_config.yaml          DeepSpeed ZeRO-2 (or DDP), with the multi-node fields
      dataset/                        metadata_edit.csv + images/ (the recipe's layout)
      lora_checkpoint.safetensors     the LoRA to start from, keyed for DiffSynth (if any)
      README.txt

The recipe lists the weight files by hand; here they come from the model folder's
*.safetensors.index.json files, so a shard list can never drift from the weights.
"""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from ..dataset.export import export_dataset
from ..engine.adapters import resolve_adapter
from ..engine.lora_files import base_mismatches, load_lora
from ..engine.lora_tools import convert
from ..engine.model_folder import inspect_model_folder, shard_index
from ..engine.npu.env import OPTIONAL_ENV, SET_ENV_CANDIDATES
from ..engine.savers import gradient_checkpointing
from ..store import Store
from ..jobs.launch import TrainOptions, accelerate_config, launch_env
from ..trainer.accelerate_config import write_config
from ..trainer.lora_io import check_compatible

SCRIPT = "train_qwen_image_edit_lora.sh"
CONFIG = "accelerate_config.yaml"
# DiffSynth's --lora_checkpoint loads keys as they are (only `lora_A.weight` ->
# `lora_A.default.weight`), so our `diffusion_model.` keys would load nothing: a copy.
LORA_COPY = "lora_checkpoint.safetensors"
TRAIN_PY = "examples/qwen_image/model_training/train.py"  # inside a DiffSynth-Studio checkout
MODEL_PARTS = ("transformer", "text_encoder", "vae")  # DiffSynth's model_paths, in this order
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # spliced into JSON inside shell quotes


def weight_files(model_dir: Path, part: str) -> list[str]:
    """The safetensors files of one component, relative to the model folder: the shards
    named by its index files, else its single *.safetensors file(s)."""
    folder = model_dir / part
    indexes, problems = shard_index(folder)
    if problems:
        raise ValueError("; ".join(problems))
    if indexes:
        names = sorted(set().union(*indexes.values()))
    else:
        names = sorted(p.name for p in folder.glob("*.safetensors"))
    if not names:
        raise ValueError(f"{folder}: no safetensors weights; DiffSynth-Studio's train.py "
                         "reads safetensors only")
    for name in names:
        if not _SAFE_NAME.match(name):
            raise ValueError(f"{folder / name}: unexpected characters in a weight file name")
    return [f"{part}/{name}" for name in names]


def model_paths(model_dir: Path) -> list:
    """DiffSynth's --model_paths value: one entry per component, a list when it is sharded."""
    entries = []
    for part in MODEL_PARTS:
        files = weight_files(model_dir, part)
        entries.append(files if len(files) > 1 else files[0])
    return entries


def _model_paths_shell(entries: list) -> str:
    """The JSON text with each path as "$MODEL_DIR/<file>", in the recipe's quoting style:
    single quotes around the JSON, closed around the variable."""
    quoted = lambda rel: '"\'"$MODEL_DIR"\'/' + rel + '"'  # noqa: E731
    lines = ["["]
    for i, entry in enumerate(entries):
        comma = "," if i < len(entries) - 1 else ""
        if isinstance(entry, list):
            lines.append("  [")
            lines += [f"    {quoted(f)}{',' if j < len(entry) - 1 else ''}" for j, f in enumerate(entry)]
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {quoted(entry)}{comma}")
    lines.append("]")
    return "'" + "\n".join(lines) + "'"


def train_arguments(opts: TrainOptions) -> list[str]:
    """train.py flags after the paths; values the reference stack lacks are left out."""
    args = ["--data_file_keys", "image,edit_image", "--extra_inputs", "edit_image",
            "--max_pixels", str(opts.max_pixels), "--dataset_repeat", str(opts.dataset_repeat),
            "--learning_rate", str(opts.learning_rate), "--num_epochs", str(opts.num_epochs),
            "--remove_prefix_in_ckpt", "pipe.dit.", "--lora_base_model", "dit",
            "--lora_target_modules", opts.lora_target_modules.replace(" ", ""),
            "--lora_rank", str(opts.lora_rank)]
    if opts.save_steps:
        args += ["--save_steps", str(opts.save_steps)]
    if opts.weight_decay != 0.01:  # DiffSynth's default; older checkouts lack the flag
        args += ["--weight_decay", str(opts.weight_decay)]
    if opts.gradient_accumulation_steps != 1:
        args += ["--gradient_accumulation_steps", str(opts.gradient_accumulation_steps)]
    if gradient_checkpointing(opts.use_gradient_checkpointing, opts.device):
        args.append("--use_gradient_checkpointing")
    return args + ["--dataset_num_workers", "8", "--find_unused_parameters"]


def _env_lines(opts: TrainOptions) -> list[str]:
    lines = []
    if opts.device == "npu":
        candidates = " ".join(shlex.quote(c) for c in SET_ENV_CANDIDATES)
        lines += ["# CANN: CANN_SET_ENV, else the first of the usual locations.",
                  f'for candidate in "${{CANN_SET_ENV:-}}" {candidates}; do',
                  '  if [ -n "$candidate" ] && [ -f "$candidate" ]; then source "$candidate"; break; fi',
                  "done", ""]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in launch_env(opts).items() if v != ""]
    if opts.device == "npu":
        lines += [f"# export {k}={shlex.quote(v or '...')}" for k, v in OPTIONAL_ENV.items()
                  if k not in opts.env]
    return lines


def render_script(opts: TrainOptions, model_dir: Path, entries: list, project: str) -> str:
    world = opts.processes_per_node * opts.num_machines
    flat = [f for e in entries for f in (e if isinstance(e, list) else [e])]
    cmd = ["accelerate launch", "--config_file", '"$config_file"']
    if opts.num_machines > 1:  # the same script on every node; only MACHINE_RANK differs
        cmd += ["--machine_rank", '"$MACHINE_RANK"']
    cmd += ['"$DIFFSYNTH_DIR/' + TRAIN_PY + '"', "--dataset_base_path", '"$DATASET_DIR"',
            "--dataset_metadata_path", '"$DATASET_DIR/metadata_edit.csv"',
            "--model_paths", '"$model_paths"', "--tokenizer_path", '"$MODEL_DIR/tokenizer"',
            "--processor_path", '"$MODEL_DIR/processor"', "--output_path", '"$OUTPUT_PATH"',
            *map(shlex.quote, train_arguments(opts))]
    if opts.lora_checkpoint:
        cmd += ["--lora_checkpoint", '"$here/' + LORA_COPY + '"']
    rows, i = [], 0
    while i < len(cmd):  # a flag and its value on one line, as the recipe writes them
        pair = cmd[i].startswith("--") and i + 1 < len(cmd) and not cmd[i + 1].startswith("--")
        rows.append(" ".join(cmd[i:i + 1 + pair]))
        i += 1 + pair
    launch = "cmd=(\n" + "\n".join(f"  {r}" for r in rows) + "\n)"
    return "\n".join([
        "#!/bin/bash",
        f"# Qwen-Image-Edit LoRA for project {project!r} with DiffSynth-Studio's train.py (the",
        f"# MindSpeed-MM recipe). Written by Qwen Image Edit Studio on {time.strftime('%Y-%m-%d')}.",
        "# Run from the root of a DiffSynth-Studio checkout (or set DIFFSYNTH_DIR), on every node:",
        f"#   MACHINE_RANK=<0..{opts.num_machines - 1}> bash {SCRIPT}",
        "# MODEL_DIR, DATASET_DIR and OUTPUT_PATH override the paths below; DRY_RUN=1 prints",
        "# the command (NUL-separated) instead of running it.",
        "set -o pipefail",
        'here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        "",
        *_env_lines(opts),
        "",
        f"default_model_dir={shlex.quote(str(model_dir))}",
        'MODEL_DIR="${MODEL_DIR:-$default_model_dir}"',
        'DATASET_DIR="${DATASET_DIR:-$here/dataset}"',
        'DIFFSYNTH_DIR="${DIFFSYNTH_DIR:-$PWD}"',
        'OUTPUT_PATH="${OUTPUT_PATH:-$here/output}"',
        f'MACHINE_RANK="${{MACHINE_RANK:-{opts.machine_rank}}}"',
        'config_file="$here/' + CONFIG + '"',
        f"world_size={world}  # processes on all nodes, one sample each per step",
        "",
        "# Weight files from the model folder's index files: transformer, text encoder, VAE.",
        "model_files=(\n" + "\n".join(f"  {f}" for f in flat) + "\n)",
        f"model_paths={_model_paths_shell(entries)}",
        "",
        launch,
        'if [ -n "${DRY_RUN:-}" ]; then printf \'%s\\0\' "${cmd[@]}"; exit 0; fi',
        "",
        'case "$MODEL_DIR" in *\\"*|*\\\\*)  # it goes into the model_paths JSON',
        '  echo "MODEL_DIR must not contain quotes or backslashes" >&2; exit 2;;',
        "esac",
        'for f in "${model_files[@]}"; do',
        '  [ -f "$MODEL_DIR/$f" ] ||',
        '    { echo "missing weight file: $MODEL_DIR/$f (set MODEL_DIR)" >&2; exit 2; }',
        "done",
        '[ -f "$DIFFSYNTH_DIR/' + TRAIN_PY + '" ] || { echo "no ' + TRAIN_PY
        + ' under $DIFFSYNTH_DIR (set DIFFSYNTH_DIR)" >&2; exit 2; }',
        "",
        'mkdir -p "$OUTPUT_PATH"',
        'log="$OUTPUT_PATH/train_$(date +%Y%m%d-%H%M%S)_node${MACHINE_RANK}.log"',
        'echo "log: $log (follow it: python -m studio follow-log $log)"',
        '"${cmd[@]}" 2>&1 | tee "$log"',
        "status=$?",
        "",
        "# tqdm redraws with carriage returns: the last loss= and speed are the latest ones.",
        "last_loss=$(tr '\\r' '\\n' < \"$log\" | grep -oE 'loss=[-+0-9.eE]+' | tail -n 1)",
        "last_speed=$(tr '\\r' '\\n' < \"$log\" | grep -oE '[0-9.]+(it/s|s/it)' | tail -n 1)",
        'echo "exit status $status; last ${last_loss:-loss=?}; speed ${last_speed:-?} '
        '(samples/s = it/s x $world_size)"',
        'exit "$status"',
        "",
    ])


def render_readme(opts: TrainOptions, model_dir: Path, project: str, notes: list[str]) -> str:
    lines = [
        f"Seed recipe export of project {project!r} (Qwen Image Edit Studio)",
        "",
        "Runs DiffSynth-Studio's examples/qwen_image/model_training/train.py under accelerate,",
        "as MindSpeed-MM's examples/diffsynth/qwen_image_edit recipe does. On each node:",
        "",
        "  1. Check out DiffSynth-Studio (on Ascend: with MindSpeed-MM's qwen_image_edit_patch.py",
        "     applied as its README says) and install it, with accelerate and deepspeed.",
        "  2. Copy this folder and the model folder to the node.",
        f"  3. cd <DiffSynth-Studio>; MODEL_DIR=/path/to/model MACHINE_RANK=<rank> bash /path/to/{SCRIPT}",
        "",
        f"Model folder when exported: {model_dir}",
        f"Devices: {opts.processes_per_node} per node x {opts.num_machines} node(s), "
        f"{opts.device}, {opts.mode}.",
        "The LoRA is saved under output/ (OUTPUT_PATH); the studio loads it with",
        "`python -m studio adapters import FILE --project NAME`.",
        "Follow a run from the studio: `python -m studio follow-log output/train_*.log`.",
        "",
        "dataset/metadata_edit.csv: `image` is the EDITED picture (the training target) and",
        "`edit_image` the SOURCE, which is how train.py's dataset reads these columns.",
    ]
    if opts.lora_alpha and opts.lora_alpha != opts.lora_rank:
        notes = [*notes, f"LoRA alpha {opts.lora_alpha} was not exported: train.py uses alpha = rank."]
    if opts.lr_scheduler != "reference" or opts.lr_warmup_steps:
        notes = [*notes, f"LR schedule {opts.lr_scheduler} ({opts.lr_warmup_steps} warm-up steps) "
                         f"was not exported: train.py has its own fixed schedule."]
    if opts.lora_checkpoint:
        notes = [*notes, f"The LoRA to start from ({opts.lora_checkpoint}) is {LORA_COPY}, keyed "
                         f"the way DiffSynth-Studio's --lora_checkpoint loads it (no prefix, "
                         f"lora_A.default.weight), alpha folded in (train.py uses alpha = rank)."]
    if opts.max_steps:
        notes = [*notes, f"max_steps {opts.max_steps} was not exported: train.py counts epochs "
                         f"({opts.num_epochs})."]
    if notes:
        lines += ["", "Notes:", *(f"  - {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _start_lora(store: Store, opts: TrainOptions, model_dir: Path) -> Path | None:
    """The LoRA to start from (an adapter id or a file), checked against the run and the
    base model before anything is written."""
    if not opts.lora_checkpoint.strip():
        return None
    path = resolve_adapter(opts.lora_checkpoint, store.require_adapter).path
    check_compatible(path, opts.lora_rank, opts.lora_target_modules)
    base_mismatches(load_lora(path), model_dir)
    return path


def export_recipe(store: Store, project: str, model_path: str | Path, out_dir: str | Path,
                       options: TrainOptions, overwrite: bool = False) -> Path:
    """Write the recipe folder; returns the script's path. Raises ValueError (ModelFolderError
    for the model folder) before writing anything when an input is unusable."""
    store.require_project(project)
    model_dir = inspect_model_folder(model_path).path
    entries = model_paths(model_dir)
    config = accelerate_config(options)  # raises on inconsistent device/node settings
    # The recipe's config also pins these two; accelerate's prompts would otherwise ask.
    config.update(dynamo_backend="no", downcast_bf16="no")
    usable = [p for p in store.pairs.iterate(project)
              if p["status"] != "error" and p["split"] == "train"]
    if not usable:
        raise ValueError(f"project {project!r} has no training pairs without errors to export")
    start = _start_lora(store, options, model_dir)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; choose a new folder (or overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    result = export_dataset(store, project, out / "dataset", fmt="recipe", overwrite=overwrite)
    write_config(out / CONFIG, config)
    if start:
        convert(start, out / LORA_COPY, "diffsynth", model_dir)
    script = out / SCRIPT
    script.write_text(render_script(options, model_dir, entries, project))
    script.chmod(0o755)
    (out / "README.txt").write_text(render_readme(options, model_dir, project,
                                                  [result.summary(), *result.notes]))
    return script
