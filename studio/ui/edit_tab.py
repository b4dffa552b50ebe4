"""The Edit tab: input image(s), instruction and sampler settings in, edited image out."""
from __future__ import annotations

import random

import gradio as gr

from ..engine.editor import EditCancelled, Editor
from ..store import Store


def build(store: Store, editor: Editor, project: gr.Dropdown) -> None:
    defaults = editor.defaults
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Input image", elem_id="edit-input")
            # Always three image inputs, so the API is the same for every model;
            # the extra two are shown only for multi-image (2509/2511) models.
            with gr.Accordion("More input images (up to 3)", open=False,
                              visible=editor.info.max_images > 1):
                extra = [gr.Image(type="pil", label=f"Input image {i}") for i in (2, 3)]
            prompt = gr.Textbox(label="Instruction", lines=2, elem_id="edit-prompt",
                                placeholder="e.g. make the sky a sunset")
            negative = gr.Textbox(label="Negative prompt", placeholder="optional")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                dice = gr.Button("Random seed", scale=0, min_width=110)
            with gr.Row():
                steps = gr.Slider(2, 100, value=defaults["steps"], step=1, label="Steps")
                cfg = gr.Slider(1.0, 10.0, value=defaults["true_cfg_scale"], step=0.1,
                                label="true_cfg_scale (1 = no CFG, twice as fast)")
            with gr.Row():
                width = gr.Number(value=0, precision=0, label="Width (0 = from input)")
                height = gr.Number(value=0, precision=0, label="Height (0 = from input)")
            with gr.Row():
                run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                cancel = gr.Button("Cancel", elem_id="edit-cancel")
        with gr.Column():
            output = gr.Image(type="pil", label="Edited image", elem_id="edit-output",
                              interactive=False)
            status = gr.Markdown(elem_id="edit-status")

    def on_edit(project_name, first, second, third, prompt, negative, seed, steps, cfg, width,
                height, request: gr.Request, progress=gr.Progress()):
        images = [im for im in (first, second, third) if im is not None]
        if not images:
            raise gr.Error("Upload an input image first.")
        if not (prompt or "").strip():
            raise gr.Error("Write an instruction.")
        size = (int(width), int(height)) if width and height else None
        try:
            result = editor.edit(
                images, prompt, negative or "", seed=int(seed or 0), steps=int(steps),
                true_cfg_scale=float(cfg), size=size,
                progress=lambda i, n: progress((i, n), desc="denoising"),
                cancel_key=request.session_hash if request else None)
        except EditCancelled:
            return None, "Cancelled."
        except ValueError as exc:
            raise gr.Error(str(exc))
        note = f"{result.image.width}×{result.image.height}, {result.seconds:.1f}s"
        if project_name:
            row = store.save_edit(project_name, images, result.image, result.params, result.seconds)
            note += f" · saved to `{project_name}` history (#{row['id']})"
        return result.image, note

    def on_cancel(request: gr.Request):
        if request:
            editor.cancel(request.session_hash)

    inputs = [project, image, *extra, prompt, negative, seed, steps, cfg, width, height]
    run.click(on_edit, inputs, [output, status], api_name="edit", concurrency_limit=1,
              concurrency_id="gpu")
    cancel.click(on_cancel, None, None, api_name="cancel_edit", queue=False)
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_name=False, queue=False)
