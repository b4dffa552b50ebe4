"""The Train tab: configure a LoRA run, see the exact command, launch it, watch, stop, resume."""
from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from ..trainer.args import LR_SCHEDULERS
from ..trainer.jobs import JobManager
from ..trainer.launch import PRESETS, TrainOptions
from . import seed_panel
from .common import adapter_choices

# Form fields by accordion, (TrainOptions field, factory(value)); FIELDS is the order of the
# event inputs.
TRAINER_FIELDS = [
    ("max_steps", lambda v: gr.Number(v, label="Max steps", precision=0, info="0 = whole epochs")),
    ("num_epochs", lambda v: gr.Number(v, label="Epochs", precision=0)),
    ("save_steps", lambda v: gr.Number(v, label="Save every N steps", precision=0,
                                       info="0 = each epoch")),
    ("lora_rank", lambda v: gr.Number(v, label="LoRA rank", precision=0, info="the seed uses 32")),
    ("lora_alpha", lambda v: gr.Number(v, label="LoRA alpha", info="0 = same as rank")),
    ("lora_target_modules", lambda v: gr.Textbox(v, label="LoRA target modules",
                                                 info="comma-separated; the seed's by default")),
    ("lora_checkpoint", lambda v: gr.Dropdown([], value=v or None, allow_custom_value=True,
                                              label="Start from LoRA", elem_id="train-init-lora",
                                              info="a project adapter or a LoRA file; empty = new")),
    ("learning_rate", lambda v: gr.Number(v, label="Learning rate", info="AdamW, the seed uses 1e-4")),
    ("lr_scheduler", lambda v: gr.Dropdown(list(LR_SCHEDULERS), value=v, label="LR schedule",
                                           info="reference: lr/3 for 5 steps, then constant")),
    ("lr_warmup_steps", lambda v: gr.Number(v, label="Warm-up steps", precision=0,
                                            info="with constant_with_warmup, linear, cosine")),
    ("weight_decay", lambda v: gr.Number(v, label="Weight decay")),
    ("max_pixels", lambda v: gr.Number(v, label="Max pixels", precision=0,
                                       info="target area; 1048576 = 1 MP, MindSpeed uses 262144")),
    ("dataset_repeat", lambda v: gr.Number(v, label="Dataset repeat", precision=0)),
    ("gradient_accumulation_steps", lambda v: gr.Number(v, label="Gradient accumulation",
                                                        precision=0)),
    ("max_grad_norm", lambda v: gr.Number(v, label="Clip gradient norm",
                                          info="0 = off (ZeRO-2 runs clip at 1.0, as the seed)")),
    ("seed", lambda v: gr.Number(v, label="Seed", precision=0)),
    ("mixed_precision", lambda v: gr.Dropdown(["auto", "no", "bf16", "fp16"], value=v,
                                              label="Precision",
                                              info="auto: bf16 on GPU/NPU, fp32 on CPU")),
    ("use_gradient_checkpointing", lambda v: gr.Checkbox(v, label="Gradient checkpointing",
                                                         info="less memory, ~30% slower")),
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
FIELDS = TRAINER_FIELDS + SAMPLE_FIELDS + DEVICE_FIELDS
# Numbers where 0 means "not set" (the trainer's default), and where empty means it.
ZERO_IS_UNSET = ("max_steps", "save_steps", "lora_alpha", "max_grad_norm")
EMPTY_IS_UNSET = ("sample_steps",)
FLOATS = ("learning_rate", "weight_decay", "lora_alpha", "max_grad_norm", "sample_true_cfg_scale")


def options_from(model: str, env_text: str, values) -> TrainOptions:
    data = {**TrainOptions().as_dict(), "model": model or "demo"}
    for (name, _), value in zip(FIELDS, values):
        if name in ZERO_IS_UNSET:
            value = value or None
        if value is None and isinstance(data[name], str):  # an emptied text or dropdown
            value = ""
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
    """The seed's Ascend variables as editable KEY=VALUE lines (an empty value drops one)."""
    from ..engine.npu.env import OPTIONAL_ENV, SEED_ENV

    return "\n".join([*(f"{k}={v}" for k, v in SEED_ENV.items()),
                      *(f"# {k}={v}" for k, v in OPTIONAL_ENV.items())])


def form_values(options: dict) -> list:
    """The form's field values for these options (the rest at their defaults)."""
    values = {**TrainOptions().as_dict(), **options}
    return [0 if values[f] is None and f not in EMPTY_IS_UNSET else values[f] for f, _ in FIELDS]


def preset_values(name: str) -> list:
    return form_values(PRESETS.get(name, {}))


def progress_html(step: int, total: int | None) -> str:
    share = 100 * step / total if total else 0
    return (f'<div id="train-progress" data-step="{step}" data-total="{total or 0}">'
            f'<div style="background:#eee;border-radius:4px;height:18px">'
            f'<div style="background:#f97316;width:{share:.1f}%;height:18px;border-radius:4px">'
            f'</div></div><small>step {step} / {total or "?"}</small></div>')


def loss_frame(snap: dict) -> pd.DataFrame | None:
    """Per-step and smoothed loss, one row per point and series. None until there is a
    point: the browser's plot fixes its series (colour domain) from the first data it gets."""
    if not snap["metrics"]:
        return None
    steps = [int(m["step"]) for m in snap["metrics"]]  # numbers, or the plot sees categories
    return pd.DataFrame({
        "step": steps * 2,
        "loss": [float(m["loss"]) for m in snap["metrics"]] + snap["loss_smoothed"],
        "series": ["per step"] * len(steps) + ["smoothed"] * len(steps)})


def sample_gallery(samples: list[dict]) -> list[tuple[str, str]]:
    """The latest checkpoint's sample edits as source | target | output rows (3 columns)."""
    latest = [s for s in samples if s["step"] == samples[0]["step"]] if samples else []
    items = []
    for s in latest:
        prompt = s["prompt"] if len(s["prompt"]) <= 80 else s["prompt"][:79] + "…"
        for kind in ("source", "target", "output"):
            items.append((s[kind], f"{kind} · step {s['step']} · {s['sample_id']}: {prompt}"))
    return items


def build(store, jobs: JobManager, project: gr.Dropdown, model_path: str):
    with gr.Row():
        with gr.Column(scale=1):
            preset = gr.Dropdown([*PRESETS, "Custom"], value="Demo on CPU", label="Preset",
                                 elem_id="train-preset")
            model = gr.Textbox(value=model_path, label="Model folder (or 'demo')")
            name = gr.Textbox(label="Run name", placeholder="default: <project>-lora")
            initial = iter(preset_values("Demo on CPU"))
            fields = []
            with gr.Accordion("Trainer options", open=False):
                fields += [make(next(initial)) for _, make in TRAINER_FIELDS]
            with gr.Accordion("Sample edits at checkpoints", open=False):
                fields += [make(next(initial)) for _, make in SAMPLE_FIELDS]
            with gr.Accordion("Devices and nodes", open=False):
                fields += [make(next(initial)) for _, make in DEVICE_FIELDS]
                env_text = gr.Textbox(label="Extra environment (KEY=VALUE per line; NPU runs "
                                            "also get the Ascend defaults shown in the command)",
                                      lines=3)
            with gr.Row():
                show = gr.Button("Show command")
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
            seed_panel.build(store, project, model, env_text, fields, options_from)
            command = gr.Markdown(elem_id="train-command")
        with gr.Column(scale=2):
            with gr.Row():
                run_pick = gr.Dropdown([], label="Run", scale=3, elem_id="train-run")
                stop = gr.Button("Stop", elem_id="train-stop", scale=1)
                resume = gr.Button("Resume", elem_id="train-resume", scale=1)
                delete = gr.Button("Delete", variant="stop", scale=1)
                reuse = gr.Button("Settings to form", scale=1, elem_id="train-reuse")
            bar = gr.HTML(progress_html(0, None))
            status = gr.Markdown(elem_id="train-status")
            curve = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260,
                                elem_id="train-loss")
            log = gr.Textbox(label="Last log lines", lines=12, max_lines=20, autoscroll=True)
            gallery = gr.Gallery(label="Sample edits at the latest checkpoint (source | target | "
                                       "output)", columns=3, height="auto", elem_id="train-samples")
            files = gr.File(label="LoRA files of this run (newest first; ComfyUI, diffusers and "
                                  "DiffSynth load them)", file_count="multiple", interactive=False,
                            elem_id="train-files")
    timer = gr.Timer(2.0)

    def runs_of(project_name):
        if not project_name or not store.get_project(project_name):
            return []
        jobs.reconcile()
        return [(f"#{r['id']} {r['name']} ({r['created_at'][:16].replace('T', ' ')})", r["id"])
                for r in reversed(jobs.runs.list(project_name))]

    def on_preview(project_name, model, env_text, *values):
        try:
            preview = jobs.preview(options_from(model, env_text, values))
        except (ValueError, KeyError) as exc:
            raise gr.Error(str(exc.args[0] if isinstance(exc, KeyError) else exc))
        config = json.dumps(preview["accelerate_config"], indent=2)
        return f"```bash\n{preview['shell']}\n```\naccelerate config:\n```json\n{config}\n```"

    def on_start(project_name, model, name, env_text, *values):
        if not project_name:
            raise gr.Error("Choose or create a project first.")
        try:
            run = jobs.submit(project_name, options_from(model, env_text, values), name or None)
        except (ValueError, KeyError) as exc:
            raise gr.Error(str(exc.args[0] if isinstance(exc, KeyError) else exc))
        return gr.Dropdown(choices=runs_of(project_name), value=run["id"])

    def on_refresh(run_id):
        if not run_id:
            return progress_html(0, None), "No run selected.", None, "", [], None
        try:
            snap = jobs.snapshot(int(run_id))
        except KeyError:
            return progress_html(0, None), "This run was deleted.", None, "", [], None
        run = snap["run"]
        parts = [f"**{run['status']}**", f"step {snap['step']}/{snap['total'] or '?'}"]
        if snap["loss"] is not None:
            parts += [f"loss {snap['loss']:.4f}", f"lr {snap['lr']:.2e}",
                      f"{snap['samples_per_s']:.2f} samples/s", f"ETA {snap['eta_s']:.0f}s"]
            if snap["peak_mem_gb"] is not None:
                parts.append(f"peak memory {snap['peak_mem_gb']:.1f} GB")
        text = " · ".join(parts)
        if run["error"]:
            text += f"\n\n```\n{run['error']}\n```"
        return (progress_html(snap["step"], snap["total"]), text, loss_frame(snap),
                "\n".join(snap["log"]), sample_gallery(snap["samples"]),
                [str(p) for p in snap["lora_files"]] or None)

    def control(action):
        def handler(project_name, run_id):
            if not run_id:
                raise gr.Error("Choose a run first.")
            try:
                getattr(jobs, action)(int(run_id))
            except (ValueError, KeyError) as exc:
                raise gr.Error(str(exc.args[0] if isinstance(exc, KeyError) else exc))
            runs = runs_of(project_name)
            return gr.Dropdown(choices=runs, value=None if action == "delete" else int(run_id))
        return handler

    def on_reuse(run_id):
        """The chosen run's options back in the form, to start a variant of it."""
        if not run_id:
            raise gr.Error("Choose a run first.")
        try:
            config = jobs.runs.require(int(run_id))["config"]
        except KeyError as exc:
            raise gr.Error(str(exc.args[0]))
        env = "\n".join(f"{k}={v}" for k, v in config.get("env", {}).items())
        return "Custom", config.get("model", "demo"), env, *form_values(config)

    reuse.click(on_reuse, run_pick, [preset, model, env_text, *fields], api_name="train_reuse")
    form = [model, env_text, *fields]
    def on_preset(name):
        if name not in PRESETS:
            return [gr.skip()] * (len(fields) + 1)
        return [*preset_values(name), ascend_env_text() if PRESETS[name]["device"] == "npu" else ""]

    preset.change(on_preset, preset, [*fields, env_text], api_name=False)
    show.click(on_preview, [project, *form], command, api_name="train_preview")
    start.click(on_start, [project, model, name, env_text, *fields], run_pick, api_name="train_start")
    for action, button in (("stop", stop), ("resume", resume), ("delete", delete)):
        button.click(control(action), [project, run_pick], run_pick, api_name=f"train_{action}")
    outputs = [bar, status, curve, log, gallery, files]
    run_pick.change(on_refresh, run_pick, outputs, api_name="train_status")
    timer.tick(on_refresh, run_pick, outputs, api_name=False, show_progress="hidden")

    init_lora = fields[[name for name, _ in FIELDS].index("lora_checkpoint")]

    def on_project(project_name):
        # Only the lists: opening the tab must not reset a form being filled in.
        runs = runs_of(project_name)
        return (gr.Dropdown(choices=runs, value=runs[0][1] if runs else None),
                gr.Dropdown(choices=adapter_choices(store, project_name)))

    project.change(on_project, project, [run_pick, init_lora], api_name=False)
    return on_project, project, [run_pick, init_lora]
