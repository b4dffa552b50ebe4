"""The Compare tab: one input through several adapters, strengths and seeds, as a grid."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr

from ..engine.compare import BASE, compare, plan_columns
from ..engine.editor import EditCancelled, Editor
from ..store import Store
from . import common


def build(store: Store, editor: Editor, project: gr.Dropdown):
    defaults = editor.defaults
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="pil", label="Input image", elem_id="compare-input")
            with gr.Row():
                pair_id = gr.Number(label="Dataset pair id", precision=0, scale=2)
                use_pair = gr.Button("Use this dataset pair", scale=1)
            target = gr.Image(type="pil", interactive=False, visible=False,
                              label="Dataset target (in the grid; each column is scored against it)")
            prompt = gr.Textbox(label="Instruction", lines=2, elem_id="compare-prompt")
            negative = gr.Textbox(label="Negative prompt", placeholder="optional")
            chosen = gr.Dropdown([(BASE, BASE)], value=[BASE], multiselect=True,
                                 allow_custom_value=True, label="Columns: base model and adapters",
                                 info="project adapters; a LoRA file path can be typed in",
                                 elem_id="compare-adapters")
            # Custom values allowed: the handler looks the run up itself.
            whole_run = gr.Dropdown([], label="Or every checkpoint of a run", allow_custom_value=True,
                                    info="fills the columns: base, then each saved step",
                                    elem_id="compare-run-checkpoints")
            strengths = gr.Textbox(value="1.0", label="Strengths (comma-separated)")
            seeds = gr.Textbox(value="0", label="Seeds (comma-separated, one row each)")
            stack = gr.Textbox(label="Few-step LoRA under every column (optional file path[:strength])")
            steps, cfg, width, height = common.sampler_controls(defaults)
            with gr.Row():
                run = gr.Button("Compare", variant="primary", elem_id="compare-run")
                cancel = gr.Button("Cancel")
        with gr.Column(scale=2):
            grid = gr.Image(type="pil", label="Comparison", interactive=False,
                            elem_id="compare-grid")
            status = gr.Markdown(elem_id="compare-status")
            files = gr.File(label="Export: grid PNG + parameters JSON", file_count="multiple")

    def on_compare(project_name, input_image, target_image, prompt, negative, chosen, strengths,
                   seeds, stack, steps, cfg, width, height, request: gr.Request,
                   progress=gr.Progress()):
        if input_image is None:
            raise gr.Error("Upload an input image first.")
        if not (prompt or "").strip():
            raise gr.Error("Write an instruction.")
        choices = [None if c == BASE else common.to_adapter(store, c) for c in chosen or []]
        under = common.to_adapter(store, stack)
        try:
            columns = plan_columns(choices, common.numbers(strengths), [under] if under else [])
            result = compare(editor, [input_image], prompt, columns, common.numbers(seeds, int) or [0],
                             negative or "", steps=int(steps), true_cfg_scale=float(cfg),
                             size=common.output_size(width, height),
                             target=target_image,
                             progress=lambda i, n: progress((i, n), desc="comparing"),
                             cancel_key=request.session_hash if request else None)
        except EditCancelled:
            return None, "Cancelled.", None
        except (ValueError, FileNotFoundError) as exc:
            raise gr.Error(str(exc))
        out = Path(tempfile.mkdtemp(prefix="compare-"))
        result.grid.save(out / "comparison.png")
        (out / "comparison.json").write_text(json.dumps(result.params, indent=2))
        note = (f"{len(result.seeds)} seed(s) × {len(result.columns)} column(s) in "
                f"{result.seconds:.1f}s")
        if result.metrics:
            note += (" · under each column: its metrics against the dataset pair"
                     f"{' (mean of the seeds)' if len(result.seeds) > 1 else ''}, all of them"
                     " in the JSON")
        if project_name:
            row = store.save_edit(project_name, [input_image], result.grid, result.params,
                                  result.seconds, kind="compare")
            note += f" · saved to `{project_name}` history (#{row['id']})"
        return result.grid, note, [str(out / "comparison.png"), str(out / "comparison.json")]

    def on_project(project_name):
        runs = store.run_checkpoints(project_name) if project_name and store.get_project(project_name) else {}
        return (gr.Dropdown(choices=[(BASE, BASE)] + common.adapter_choices(store, project_name)),
                gr.Dropdown(choices=[(f"{rows[0]['name']} ({len(rows)} checkpoints)", run)
                                     for run, rows in runs.items()], value=None))

    def on_whole_run(project_name, run_id):
        runs = store.run_checkpoints(project_name) if project_name else {}
        rows = runs.get(int(run_id)) if str(run_id or "").isdigit() else None
        if not rows:
            raise gr.Error("That run has no checkpoints in this project.")
        return gr.Dropdown(value=[BASE, *(str(r["id"]) for r in rows)])

    run.click(on_compare, [project, image, target, prompt, negative, chosen, strengths, seeds,
                           stack, steps, cfg, width, height], [grid, status, files],
              api_name="compare", concurrency_limit=1, concurrency_id="gpu")
    common.wire_pair_and_cancel(store, editor, project, pair_id, use_pair, cancel, image, prompt,
                                target)
    whole_run.input(on_whole_run, [project, whole_run], chosen, api_name="compare_whole_run")
    # A new upload is no longer the pair's source: its target would score the wrong edit.
    image.upload(lambda: gr.Image(value=None, visible=False), None, target, api_name=False)
    project.change(on_project, project, [chosen, whole_run], api_name=False)
    return on_project, project, [chosen, whole_run]
