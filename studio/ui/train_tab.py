"""The Train tab: configure a LoRA run, see the exact command, launch it, watch, stop, resume."""
from __future__ import annotations

import json
from typing import NamedTuple

import gradio as gr
import pandas as pd

from ..store import NotFoundError
from ..jobs import planning
from ..jobs.manager import JobManager
from ..jobs.presets import DEMO, TRAIN_PRESETS
from . import recipe_panel, scoreboard_panel
from .common import adapter_choices, user_error
from .train_form import (NAMES, ascend_env_text, form_values, options_from, preset_values,
                         sections, widget)
from ..trainer.options import DEVICES, SAMPLES


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


class TrainTab(NamedTuple):
    loader: tuple  # (fn, inputs, outputs) the app runs on page load and tab select
    use_in_compare: gr.Button  # the scoreboard's; the app wires it to the Compare tab
    metric: gr.Dropdown
    run_pick: gr.Dropdown


def build(store, jobs: JobManager, project: gr.Dropdown, model_path: str) -> TrainTab:
    with gr.Row():
        with gr.Column(scale=1):
            preset = gr.Dropdown([*TRAIN_PRESETS, "Custom"], value=DEMO, label="Preset",
                                 elem_id="train-preset")
            model = gr.Textbox(value=model_path, label="Model folder (or 'demo')")
            name = gr.Textbox(label="Run name", placeholder="default: <project>-lora")
            initial = iter(preset_values(DEMO))
            fields = []
            for section, options in sections().items():
                with gr.Accordion(section, open=False):
                    fields += [widget(opt, next(initial)) for opt in options]
                    if section == SAMPLES:
                        scoreboard_panel.preview_controls(store, model, *(
                            fields[NAMES.index(f)]
                            for f in ("sample_inference_steps", "sample_true_cfg_scale")))
                    if section == DEVICES:
                        env_text = gr.Textbox(label="Extra environment (KEY=VALUE per line; NPU "
                                                    "runs also get the Ascend defaults shown in "
                                                    "the command)", lines=3)
            with gr.Row():
                show = gr.Button("Show command")
                plan_button = gr.Button("Memory plan", elem_id="train-plan")
                presets_button = gr.Button("Plans of every preset")
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
            recipe_panel.build(store, project, model, env_text, fields, options_from)
            command = gr.Markdown(elem_id="train-command")
            plan_text = gr.Markdown(elem_id="train-plan-text")
            preset_table = gr.Dataframe(visible=False, wrap=True, elem_id="train-preset-plans")
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
            val_curve = gr.LinePlot(x="step", y="val_loss", height=200, elem_id="train-val-loss",
                                    title="Validation loss (held-out pairs, fixed timesteps and "
                                          "noise; step 0 = before training)")
            log = gr.Textbox(label="Last log lines", lines=12, max_lines=20, autoscroll=True)
            gallery = gr.Gallery(label="Sample edits at the latest checkpoint (source | target | "
                                       "output)", columns=3, height="auto", elem_id="train-samples")
            use_in_compare = scoreboard_panel.build(store, run_pick, timer := gr.Timer(2.0))
            files = gr.File(label="LoRA files of this run (newest first; ComfyUI, diffusers and "
                                  "DiffSynth load them)", file_count="multiple", interactive=False,
                            elem_id="train-files")

    def runs_of(project_name):
        if not project_name or not store.get_project(project_name):
            return []
        jobs.reconcile()
        return [(f"#{r['id']} {r['name']} ({r['created_at'][:16].replace('T', ' ')})", r["id"])
                for r in reversed(jobs.runs.list(project_name))]

    def on_preview(project_name, model, env_text, *values):
        try:
            preview = planning.launch_preview(store, options_from(model, env_text, values))
        except (ValueError, NotFoundError) as exc:
            raise user_error(exc)
        config = json.dumps(preview["accelerate_config"], indent=2)
        text = f"```bash\n{preview['shell']}\n```\naccelerate config:\n```json\n{config}\n```"
        if project_name and store.get_project(project_name) and \
                not store.pairs.count(project_name, split="validation"):
            text += ("\n\nThis project has no validation pairs, so the run makes no sample edits "
                     "and no validation loss: hold some out in the Dataset tab.")
        return text

    def on_plan(project_name, model, env_text, *values):
        try:
            planned = planning.memory_plan(store, options_from(model, env_text, values))
        except (ValueError, NotFoundError, OSError) as exc:
            raise user_error(exc)
        return "```\n" + planned.text() + "\n```"

    def on_preset_plans(model):
        try:
            planned, rows = planning.preset_plans(store, model or "demo")
        except (ValueError, NotFoundError, OSError) as exc:
            raise user_error(exc)
        return gr.Dataframe(pd.DataFrame(rows), visible=True, label=f"Every preset on {planned}")

    def on_start(project_name, model, name, env_text, *values):
        if not project_name:
            raise gr.Error("Choose or create a project first.")
        try:
            run = jobs.submit(project_name, options_from(model, env_text, values), name or None)
        except (ValueError, NotFoundError) as exc:
            raise user_error(exc)
        return gr.Dropdown(choices=runs_of(project_name), value=run["id"])

    def on_refresh(run_id):
        if not run_id:
            return progress_html(0, None), "No run selected.", None, None, "", [], None
        try:
            snap = jobs.snapshot(int(run_id))
        except NotFoundError:
            return progress_html(0, None), "This run was deleted.", None, None, "", [], None
        run = snap["run"]
        parts = [f"**{run['status']}**", f"step {snap['step']}/{snap['total'] or '?'}"]
        if snap["loss"] is not None:
            parts += [f"loss {snap['loss']:.4f}", f"lr {snap['lr']:.2e}",
                      f"{snap['samples_per_s']:.2f} samples/s", f"ETA {snap['eta_s']:.0f}s"]
            if snap["peak_mem_gb"] is not None:
                parts.append(f"peak memory {snap['peak_mem_gb']:.1f} GB")
        if snap["validation"]:
            last = snap["validation"][-1]
            parts.append(f"validation loss {last['val_loss']:.4f} at step {last['step']}")
        text = " · ".join(parts)
        if run["error"]:
            text += f"\n\n```\n{run['error']}\n```"
        val = pd.DataFrame(snap["validation"]) if snap["validation"] else None
        return (progress_html(snap["step"], snap["total"]), text, loss_frame(snap), val,
                "\n".join(snap["log"]), sample_gallery(snap["samples"]),
                [str(p) for p in snap["lora_files"]] or None)

    def control(action):
        def handler(project_name, run_id):
            if not run_id:
                raise gr.Error("Choose a run first.")
            try:
                getattr(jobs, action)(int(run_id))
            except (ValueError, NotFoundError) as exc:
                raise user_error(exc)
            runs = runs_of(project_name)
            return gr.Dropdown(choices=runs, value=None if action == "delete" else int(run_id))
        return handler

    def on_reuse(run_id):
        """The chosen run's options back in the form, to start a variant of it."""
        if not run_id:
            raise gr.Error("Choose a run first.")
        try:
            config = jobs.runs.require(int(run_id))["config"]
        except NotFoundError as exc:
            raise user_error(exc)
        env = "\n".join(f"{k}={v}" for k, v in config.get("env", {}).items())
        return "Custom", config.get("model", "demo"), env, *form_values(config)

    reuse.click(on_reuse, run_pick, [preset, model, env_text, *fields], api_name="train_reuse")
    form = [model, env_text, *fields]
    def on_preset(name):
        if name not in TRAIN_PRESETS:
            return [gr.skip()] * (len(fields) + 1)
        return [*preset_values(name), ascend_env_text() if TRAIN_PRESETS[name]["device"] == "npu" else ""]

    preset.change(on_preset, preset, [*fields, env_text], api_name=False)
    show.click(on_preview, [project, *form], command, api_name="train_preview")
    plan_button.click(on_plan, [project, *form], plan_text, api_name="train_plan")
    presets_button.click(on_preset_plans, model, preset_table, api_name="train_preset_plans")
    start.click(on_start, [project, model, name, env_text, *fields], run_pick, api_name="train_start")
    for action, button in (("stop", stop), ("resume", resume), ("delete", delete)):
        button.click(control(action), [project, run_pick], run_pick, api_name=f"train_{action}")
    outputs = [bar, status, curve, val_curve, log, gallery, files]
    run_pick.change(on_refresh, run_pick, outputs, api_name="train_status")
    timer.tick(on_refresh, run_pick, outputs, api_name=False, show_progress="hidden")

    init_lora = fields[NAMES.index("lora_checkpoint")]

    def on_project(project_name):
        # Only the lists: opening the tab must not reset a form being filled in.
        runs = runs_of(project_name)
        return (gr.Dropdown(choices=runs, value=runs[0][1] if runs else None),
                gr.Dropdown(choices=adapter_choices(store, project_name)))

    project.change(on_project, project, [run_pick, init_lora], api_name=False)
    use, metric = use_in_compare
    return TrainTab((on_project, project, [run_pick, init_lora]), use, metric, run_pick)
