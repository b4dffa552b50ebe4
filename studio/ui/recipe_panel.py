"""Train tab panels for the reference stack: export the form's run as the reference recipe
(MindSpeed-MM / DiffSynth-Studio), and follow such a run from its log."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd

from ..engine.model_folder import ModelFolderError
from ..engine.models import resolve_model
from ..store import NotFoundError, Store
from .common import user_error
from ..recipe.external_log import follow_log
from ..jobs.launch import TrainOptions
from ..recipe.export import export_recipe


def export_folder(store: Store, project: str, text: str) -> Path:
    """A relative (or empty) folder goes under the project's folder, so that nothing lands
    in the app's working directory by accident."""
    if text and text.strip() and Path(text.strip()).expanduser().is_absolute():
        return Path(text.strip()).expanduser()
    name = (text or "").strip() or f"seed_export_{time.strftime('%Y%m%d-%H%M%S')}"
    return store.project_dir(project) / "exports" / name


def follow_text(state: dict) -> str:
    if not state["total"]:
        return "No training progress in this log yet."
    speed = ("?" if not state["it_per_s"] else f"{state['it_per_s']:.2f} it/s"
             if state["it_per_s"] >= 1 else f"{state['s_per_it']:.2f} s/it")
    loss = "?" if state["loss"] is None else f"{state['loss']:.4f}"
    return (f"epoch {state['epoch']} · step **{state['step']}/{state['total']}** · loss **{loss}**"
            f" · {speed} · elapsed {state['elapsed'] or '?'} · ETA {state['eta'] or '?'}")


def build(store: Store, project: gr.Dropdown, model: gr.Textbox, env_text: gr.Textbox,
          fields: list, to_options: Callable[[str, str, list], TrainOptions]) -> None:
    with gr.Accordion("Export for MindSpeed-MM / DiffSynth-Studio", open=False):
        out_text = gr.Textbox(label="Output folder",
                              placeholder="new folder; relative names go under the project's exports/")
        export = gr.Button("Export script, config and dataset", elem_id="recipe-export")
        exported = gr.Markdown(elem_id="recipe-export-result")
    with gr.Accordion("Follow an external run", open=False):
        log_path = gr.Textbox(label="Log file", placeholder="output/train_<date>_node0.log")
        with gr.Row():
            follow = gr.Button("Follow", elem_id="seed-follow")
            unfollow = gr.Button("Stop following")
        followed = gr.Markdown(elem_id="seed-follow-result")
        refresh = gr.Timer(5.0, active=False)  # re-reads the log while following
        curve = gr.LinePlot(x="step", y="loss", title="Loss (external run)", height=220)

    def on_export(project_name, folder_text, model_text, env, *values):
        if not project_name:
            raise gr.Error("Choose or create a project first.")
        options = to_options(model_text, env, values)
        try:
            folder = resolve_model(options.model, store.root)
            out = export_folder(store, project_name, folder_text)
            script = export_recipe(store, project_name, folder, out, options)
        except (ModelFolderError, ValueError, NotFoundError) as exc:
            raise user_error(exc)
        readme = (script.parent / "README.txt").read_text()
        return f"Wrote `{script.parent}`\n\n```\n{readme}```"

    def read(path):
        state = follow_log(path.strip())
        return follow_text(state), pd.DataFrame(state["losses"], columns=["step", "loss"])

    def on_follow(path):
        if not path or not path.strip():
            raise gr.Error("Enter the path of the run's log file.")
        try:
            return *read(path), gr.Timer(active=True)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise gr.Error(str(exc))

    def on_tick(path):
        try:
            return *read(path or ""), gr.Timer(active=True)
        except OSError as exc:  # moved or deleted meanwhile: say so and stop re-reading
            return f"Stopped following: {exc}", gr.skip(), gr.Timer(active=False)

    export.click(on_export, [project, out_text, model, env_text, *fields], exported,
                 api_name="train_seed_export")
    follow.click(on_follow, log_path, [followed, curve, refresh], api_name="train_follow_log")
    refresh.tick(on_tick, log_path, [followed, curve, refresh], api_name="train_follow_refresh",
                 show_progress="hidden")
    unfollow.click(lambda: gr.Timer(active=False), None, refresh, api_name=False)
