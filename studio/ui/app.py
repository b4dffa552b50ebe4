"""Builds the Gradio app and starts it."""
from __future__ import annotations

import argparse
import os
import threading

import gradio as gr

from ..engine.editor import Editor
from ..engine.models import resolve_model
from ..engine import optional_torchao, savers
from ..paths import projects_dir
from ..store import Store
from ..jobs.manager import JobManager
from . import (adapters_tab, compare_tab, dataset_tab, edit_tab, project_bar, scoreboard_panel,
               security, train_tab)

AUTH_ENV = "STUDIO_AUTH"


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth / STUDIO_AUTH must look like USER:PASS")
    return user, password


def demo_notice(editor: Editor) -> str:
    if not editor.info.is_demo:
        return f"Model: `{editor.info.path}` ({editor.info.pipeline_class}) on {editor.device}"
    return (
        "**Demo model: random weights, so every output is noise.** It has the exact "
        "Qwen-Image-Edit architecture at tiny size, so every feature can be tried on a CPU. "
        "For real edits start the studio with `python app.py --model /path/to/Qwen-Image-Edit` "
        "(or set `STUDIO_MODEL`)."
    )


def build_app(store: Store, editor: Editor, jobs: JobManager) -> gr.Blocks:
    # Gradio keeps uploads and outputs in its cache folder: clear day-old files every hour.
    with gr.Blocks(title="Qwen Image Edit Studio", delete_cache=(3600, 86400)) as app:
        gr.Markdown("# Qwen Image Edit Studio")
        gr.Markdown(demo_notice(editor), elem_id="model-notice")
        project = project_bar.build(store)
        with gr.Tabs() as tabs:
            with gr.Tab("Dataset"):
                dataset_tab.build(store, project, editor=editor)
            with gr.Tab("Train", id="train") as train:
                train_parts = train_tab.build(store, jobs, project, str(editor.info.path))
                loaders = [(train, train_parts.loader)]
            with gr.Tab("Edit", id="edit") as edit:
                loaders.append((edit, edit_tab.build(store, editor, project)))
            with gr.Tab("Compare", id="compare") as compare:
                compare_parts = compare_tab.build(store, editor, project)
                loaders.append((compare, compare_parts))
                compare_columns = compare_parts[2][0]
            with gr.Tab("Adapters", id="adapters") as adapters:
                loaders.append((adapters, adapters_tab.build(store, project, str(editor.info.path))))

        def use_in_compare(run_id, metric):
            return gr.Dropdown(value=scoreboard_panel.compare_picks(store, run_id, metric))

        train_parts.use_in_compare.click(
            use_in_compare, [train_parts.run_pick, train_parts.metric], compare_columns,
            api_name="train_use_in_compare").success(
            lambda: gr.Tabs(selected="compare"), None, tabs, api_name=False)
        loaders.append((None, project_bar.loader(store, project)))
        # Per-project choices (runs, adapters, history) are read fresh on every page load and
        # whenever a tab is opened, so an adapter trained a minute ago is there to pick.
        for tab, (fn, inputs, outputs) in loaders:
            app.load(fn, inputs, outputs, api_name=False)
            if tab is not None:
                tab.select(fn, inputs, outputs, api_name=False)
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Qwen Image Edit Studio (browser app)")
    p.add_argument("--model", default=None, help="model folder or 'demo' (default: $STUDIO_MODEL or demo)")
    p.add_argument("--projects-dir", default=None, help="data folder (default: $STUDIO_PROJECTS_DIR or ./projects)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=os.environ.get(AUTH_ENV), help="USER:PASS (or $STUDIO_AUTH)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--vae-tiling", action="store_true")
    savers.add_flags(p)  # the editor's memory savers, as `studio edit` takes them
    p.add_argument("--max-upload", default="50mb", help="largest accepted upload")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The app's process: its editor quantizes only if started so (nothing imported diffusers yet).
    optional_torchao.keep_out_unless(savers.Savers.of(args).quantized)
    auth = parse_auth(args.auth)
    root = projects_dir(args.projects_dir)
    security.use_private_cache(root)  # before build_app: Gradio's file cache in the projects folder
    store = Store(root)
    if not store.list_projects():
        store.create_project("default")
    editor = Editor(resolve_model(args.model, root), device=args.device, dtype=args.dtype,
                    vae_tiling=args.vae_tiling, cpu_offload=args.cpu_offload,
                    savers=savers.Savers.of(args))
    # Load the pipeline while the page is served, so the first edit does not wait for it.
    threading.Thread(target=lambda: editor.pipeline, daemon=True, name="load-model").start()
    # A run on the editor's accelerator needs its memory: the editor lets go of its pipeline.
    jobs = JobManager(store, before_start=lambda device: editor.shares_device(device) and editor.release())
    jobs.reconcile()  # runs left from before a restart: reattach the live ones, settle the dead
    jobs.start_reconciler()  # and from now on, whether or not a page is open
    app = build_app(store, editor, jobs)
    app.queue(default_concurrency_limit=None)
    app.launch(server_name=args.host, server_port=args.port, auth=auth,
               max_file_size=args.max_upload, show_error=True, **security.launch_options(root))
    return 0
