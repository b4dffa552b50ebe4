"""Widgets and small helpers shared by the Edit and Compare tabs."""
from __future__ import annotations

import json

import gradio as gr
from PIL import Image

from ..engine.adapters import AdapterRef, resolve_adapter
from ..engine.presets import SAMPLER_PRESETS, sampler_settings
from ..store import NotFoundError, Store


def user_error(exc: Exception) -> gr.Error:
    """The exception's own message for the page."""
    return gr.Error(str(exc))


def adapter_choices(store: Store, project: str | None) -> list[tuple[str, str]]:
    if not project or not store.get_project(project):
        return []
    return [(f"{r['name']}" + (f" · step {r['step']}" if r["step"] is not None else "")
             + f" (#{r['id']})", str(r["id"])) for r in store.list_adapters(project)]


def to_adapter(store: Store, value: str | None, strength: float | None = None) -> AdapterRef | None:
    """A picker's value (an adapter id, or a LoRA file path typed in, either with an optional
    ':STRENGTH') -> an AdapterRef; `strength`, when given, is the slider's and wins."""
    if not value or not str(value).strip():
        return None
    try:
        ref = resolve_adapter(str(value), store.require_adapter)
    except (NotFoundError, FileNotFoundError, ValueError) as exc:
        raise user_error(exc)
    return ref if strength is None else AdapterRef(ref.path, float(strength), ref.label)


def load_pair(store: Store, project: str, pair_id) -> tuple[Image.Image, Image.Image, str]:
    """(source, target, instruction) of a dataset pair, for 'use a dataset pair'."""
    if not project or pair_id in (None, ""):
        raise gr.Error("Choose a project and a pair id (see the Dataset tab).")
    try:
        pair = store.pairs.require(project, int(pair_id))
    except NotFoundError as exc:
        raise user_error(exc)
    source = Image.open(store.pairs.path(project, pair["source_path"]))
    target = Image.open(store.pairs.path(project, pair["target_path"]))
    return source, target, pair["instruction"] or ""


def sampler_controls(defaults: dict):
    """Preset picker, steps, true_cfg_scale and output size; the preset sets steps and cfg."""
    preset = gr.Dropdown(list(SAMPLER_PRESETS), value="Model defaults", label="Sampler preset",
                         info="few-step LoRAs (e.g. Lightning) need their own steps and cfg 1")
    with gr.Row():
        steps = gr.Slider(2, 100, value=defaults["steps"], step=1, label="Steps")
        cfg = gr.Slider(1.0, 10.0, value=defaults["true_cfg_scale"], step=0.1,
                        label="true_cfg_scale (1 = no CFG, twice as fast)")
    with gr.Row():
        width = gr.Number(value=0, precision=0, label="Width (0 = from input)")
        height = gr.Number(value=0, precision=0, label="Height (0 = from input)")
    preset.change(lambda name: tuple(sampler_settings(name, defaults).values()), preset,
                  [steps, cfg], api_name=False)
    return steps, cfg, width, height


def output_size(width, height) -> tuple[int, int] | None:
    return (int(width), int(height)) if width and height else None


def wire_pair_and_cancel(store: Store, editor, project, pair_id, use_pair, cancel, image, prompt,
                         target, pair_api: str | bool = False) -> None:
    """'Use this dataset pair' fills the input, instruction and target; Cancel stops this
    browser session's running edit."""

    def on_use_pair(project_name, pid):
        source, target_image, instruction = load_pair(store, project_name, pid)
        return source, instruction, gr.Image(value=target_image, visible=True)

    def on_cancel(request: gr.Request):
        if request:
            editor.cancel(request.session_hash)

    use_pair.click(on_use_pair, [project, pair_id], [image, prompt, target], api_name=pair_api)
    cancel.click(on_cancel, None, None, api_name=False, queue=False)


def history(store: Store, project: str | None, limit: int = 24) -> list[tuple[str, str]]:
    if not project or not store.get_project(project):
        return []
    return [(row["output_path"], f"#{row['id']} {row['kind']}: {row['prompt'] or ''}"[:80])
            for row in store.list_edits(project, limit=limit)]


def edit_details(store: Store, project: str | None, index: int) -> str:
    rows = store.list_edits(project, limit=index + 1) if project else []
    if index >= len(rows):
        return ""
    row = rows[index]
    params = json.loads(row["params"] or "{}")
    return f"```json\n{json.dumps({'id': row['id'], 'created_at': row['created_at'], 'seconds': row['seconds'], **params}, indent=2)}\n```"


def numbers(text: str, kind=float) -> list:
    try:
        return [kind(v) for v in (text or "").replace(" ", "").split(",") if v]
    except ValueError:
        raise gr.Error(f"Expected comma-separated numbers, got {text!r}.")
