"""Widgets and small helpers shared by the Edit and Compare tabs."""
from __future__ import annotations

import json

import gradio as gr
from PIL import Image

from ..engine.adapters import AdapterRef, resolve_adapter
from ..engine.presets import SAMPLER_PRESETS
from ..store import Store


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
        ref = resolve_adapter(str(value), store.get_adapter)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise gr.Error(str(exc.args[0] if isinstance(exc, KeyError) else exc))
    return ref if strength is None else AdapterRef(ref.path, float(strength), ref.label)


def load_pair(store: Store, project: str, pair_id) -> tuple[Image.Image, Image.Image, str]:
    """(source, target, instruction) of a dataset pair, for 'use a dataset pair'."""
    if not project or pair_id in (None, ""):
        raise gr.Error("Choose a project and a pair id (see the Dataset tab).")
    try:
        pair = store.pairs.require(project, int(pair_id))
    except KeyError as exc:
        raise gr.Error(str(exc.args[0]))
    source = Image.open(store.pairs.path(project, pair["source_path"]))
    target = Image.open(store.pairs.path(project, pair["target_path"]))
    return source, target, pair["instruction"] or ""


def sampler_preset_picker() -> gr.Dropdown:
    return gr.Dropdown(list(SAMPLER_PRESETS), value="Model defaults", label="Sampler preset",
                       info="few-step LoRAs (e.g. Lightning) need their own steps and cfg 1")


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
