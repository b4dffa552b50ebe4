"""The Adapters tab: merge, convert, fuse, average and inspect a project's LoRAs.

Drawing and wiring only: every handler calls jobs/adapter_tools.py and shows its summary.
Handlers are plain functions of (store, model, …) so tests drive them without a browser.
"""
from __future__ import annotations

import gradio as gr

from ..engine.lora_files import LAYOUTS
from ..jobs import adapter_tools
from ..store import NotFoundError, Store
from . import common

ERRORS = (ValueError, NotFoundError, FileNotFoundError)


def _run(fn, *args, **kwargs) -> str:
    try:
        return fn(*args, **kwargs).summary
    except ERRORS as exc:
        raise common.user_error(exc)


def on_merge(store: Store, model: str, project: str, chosen: list[str], strengths: str,
             rank, name: str) -> str:
    chosen = list(chosen or [])
    if len(chosen) < 2:
        raise gr.Error("Pick at least two adapters to merge.")
    values = common.numbers(strengths) or [1.0]
    if len(values) == 1:
        values = values * len(chosen)
    if len(values) != len(chosen):
        raise gr.Error(f"{len(chosen)} adapters but {len(values)} strengths: give one strength, "
                       "or one per adapter.")
    specs = [f"{a}:{s}" for a, s in zip(chosen, values)]
    return _run(adapter_tools.merge, store, project, specs, name, model, int(rank) if rank else None)


def on_convert(store: Store, model: str, project: str, adapter: str, layout: str, name: str) -> str:
    if not adapter:
        raise gr.Error("Pick an adapter to convert.")
    return _run(adapter_tools.convert, store, project, adapter, layout, name or None, model)


def on_fuse(store: Store, model: str, adapter: str, strength, name: str) -> str:
    if not adapter:
        raise gr.Error("Pick an adapter to fuse.")
    return _run(adapter_tools.fuse, store, f"{adapter}:{float(strength)}", name, model)


def on_average(store: Store, model: str, project: str, run_id, last, decay, name: str) -> str:
    if not str(run_id or "").isdigit():
        raise gr.Error("Pick a run whose checkpoints to average.")
    return _run(adapter_tools.average, store, project, name, run_id=int(run_id), last=int(last),
                ema=float(decay) if decay else None, model=model)


def on_inspect(store: Store, adapter: str) -> dict:
    if not adapter:
        raise gr.Error("Pick an adapter to inspect.")
    try:
        return adapter_tools.inspect(store, adapter)
    except ERRORS as exc:
        raise common.user_error(exc)


def choices(store: Store, project: str | None):
    """The pickers' choices for a project: adapters, and runs with checkpoints."""
    adapters = common.adapter_choices(store, project)
    runs = store.run_checkpoints(project) if project and store.get_project(project) else {}
    return adapters, [(f"{rows[0]['name']} (run {run}, {len(rows)} checkpoints)", str(run))
                      for run, rows in runs.items()]


def build(store: Store, project: gr.Dropdown, model: str):
    gr.Markdown("New adapters are saved under the project's `adapters/` folder and appear in "
                "Edit and Compare with where they came from. Every file loads in plain diffusers.")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Merge")
            merge_from = gr.Dropdown([], multiselect=True, allow_custom_value=True,
                                     label="Adapters to merge", elem_id="adapters-merge-from")
            strengths = gr.Textbox(value="1.0", label="Strengths (one, or one per adapter)")
            rank = gr.Number(value=0, precision=0, label="Target rank (0 = exact: ranks concatenated; "
                                                         "else SVD, its error is reported)")
            merge_name = gr.Textbox(label="New adapter name")
            merge = gr.Button("Merge", variant="primary")
            gr.Markdown("### Average checkpoints")
            run = gr.Dropdown([], label="Run", allow_custom_value=True)
            last = gr.Number(value=3, precision=0, label="Last N checkpoints")
            decay = gr.Number(value=0, label="EMA decay (0 = uniform weights; e.g. 0.9 favours the newest)")
            avg_name = gr.Textbox(label="New adapter name")
            average = gr.Button("Average")
        with gr.Column():
            one = gr.Dropdown([], allow_custom_value=True, label="Adapter (convert, fuse, inspect)",
                              elem_id="adapters-one")
            gr.Markdown("### Convert")
            layout = gr.Radio(list(LAYOUTS), value="diffsynth", label="Key layout",
                              info="diffsynth: what DiffSynth-Studio's --lora_checkpoint loads; "
                                   "comfyui: diffusion_model. prefix; diffusers: transformer. prefix")
            conv_name = gr.Textbox(label="New adapter name (default: NAME-LAYOUT)")
            convert = gr.Button("Convert")
            gr.Markdown("### Fuse into the base model")
            strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Strength")
            fuse_name = gr.Textbox(label="Model folder name (under the projects folder's _models/)")
            fuse = gr.Button("Fuse")
            inspect = gr.Button("Inspect")
            facts = gr.JSON(label="Inspect")
    status = gr.Markdown(elem_id="adapters-status")

    def refresh(project_name):
        adapters, runs = choices(store, project_name)
        return gr.Dropdown(choices=adapters), gr.Dropdown(choices=adapters), gr.Dropdown(choices=runs)

    outputs = [merge_from, one, run]

    def then_refresh(fn):
        def handler(project_name, *args):
            return (fn(project_name, *args), *refresh(project_name))
        return handler

    merge.click(then_refresh(lambda p, *a: on_merge(store, model, p, *a)),
                [project, merge_from, strengths, rank, merge_name], [status, *outputs], api_name=False)
    convert.click(then_refresh(lambda p, *a: on_convert(store, model, p, *a)),
                  [project, one, layout, conv_name], [status, *outputs], api_name=False)
    fuse.click(lambda a, s, n: on_fuse(store, model, a, s, n), [one, strength, fuse_name], status,
               api_name=False, concurrency_limit=1, concurrency_id="gpu")
    average.click(then_refresh(lambda p, *a: on_average(store, model, p, *a)),
                  [project, run, last, decay, avg_name], [status, *outputs], api_name=False)
    inspect.click(lambda a: on_inspect(store, a), one, facts, api_name=False)
    project.change(refresh, project, outputs, api_name=False)
    return refresh, project, outputs
