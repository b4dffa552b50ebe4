"""The Edit tab: input image(s), instruction, adapters and sampler settings in, edited image out."""
from __future__ import annotations

import random

import gradio as gr

from ..engine.editor import EditCancelled, Editor
from ..store import Store
from . import common

ADAPTER_SLOTS = 3  # on_edit takes one (adapter, strength) pair per slot


def build(store: Store, editor: Editor, project: gr.Dropdown):
    """Draws the tab; returns (fn, inputs, outputs) that reload the per-project choices, which
    the app also runs on page load."""
    defaults = editor.defaults
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="pil", label="Input image", elem_id="edit-input")
            # Always three image inputs, so the API is the same for every model;
            # the extra two are shown only for multi-image (2509/2511) models.
            with gr.Accordion("More input images (up to 3)", open=False,
                              visible=editor.info.max_images > 1):
                extra = [gr.Image(type="pil", label=f"Input image {i}") for i in (2, 3)]
            with gr.Row():
                pair_id = gr.Number(label="Dataset pair id", precision=0, scale=2)
                use_pair = gr.Button("Use this dataset pair", scale=1)
            prompt = gr.Textbox(label="Instruction", lines=2, elem_id="edit-prompt",
                                placeholder="e.g. make the sky a sunset")
            negative = gr.Textbox(label="Negative prompt", placeholder="optional")
            with gr.Accordion("Adapters (LoRA), stackable", open=True):
                slots = []
                for i in range(ADAPTER_SLOTS):
                    with gr.Row():
                        picker = gr.Dropdown([], value=None, label=f"Adapter {i + 1}",
                                             allow_custom_value=True, scale=3,
                                             info="a project adapter, or a LoRA file path" if i == 0 else None,
                                             elem_id=f"edit-adapter-{i}")
                        strength = gr.Slider(0, 2, value=1.0, step=0.05, label="Strength", scale=2)
                    slots += [picker, strength]
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                dice = gr.Button("Random seed", scale=0, min_width=110)
            steps, cfg, width, height = common.sampler_controls(defaults)
            with gr.Row():
                run = gr.Button("Edit", variant="primary", elem_id="edit-run")
                cancel = gr.Button("Cancel", elem_id="edit-cancel")
                plan_button = gr.Button("Memory plan", elem_id="edit-plan")
        with gr.Column():
            output = gr.Image(type="pil", label="Edited image", elem_id="edit-output",
                              interactive=False)
            status = gr.Markdown(elem_id="edit-status")
            slider = gr.ImageSlider(type="pil", label="Before / after", interactive=False)
            target = gr.Image(type="pil", label="Dataset target (for reference)",
                              interactive=False, visible=False)
    with gr.Accordion("History of this project", open=False):
        refresh = gr.Button("Refresh history")
        gallery = gr.Gallery(label="Recent edits and comparisons", columns=6, height=260,
                             elem_id="edit-history")
        details = gr.Markdown()

    def on_edit(project_name, first, second, third, prompt, negative, seed, steps, cfg, width,
                height, adapter1, strength1, adapter2, strength2, adapter3, strength3,
                request: gr.Request, progress=gr.Progress()):
        images = [im for im in (first, second, third) if im is not None]
        if not images:
            raise gr.Error("Upload an input image first.")
        if not (prompt or "").strip():
            raise gr.Error("Write an instruction.")
        picked = [(adapter1, strength1), (adapter2, strength2), (adapter3, strength3)]
        adapters = [ref for ref in (common.to_adapter(store, v, s) for v, s in picked) if ref]
        try:
            result = editor.edit(
                images, prompt, negative or "", seed=int(seed or 0), steps=int(steps),
                true_cfg_scale=float(cfg), size=common.output_size(width, height), adapters=adapters,
                progress=lambda i, n: progress((i, n), desc="denoising"),
                cancel_key=request.session_hash if request else None)
        except EditCancelled:
            return None, "Cancelled.", None
        except (ValueError, FileNotFoundError) as exc:
            raise gr.Error(str(exc))
        note = f"{result.image.width}×{result.image.height}, {result.seconds:.1f}s"
        if editor.describe_savers():  # they change the speed, and fp8/int8 the pixels
            note += f" · {editor.describe_savers()}"
        if adapters:
            note += " · " + ", ".join(f"{a.name} @ {a.strength:g}" for a in adapters)
        if project_name:
            row = store.save_edit(project_name, images, result.image, result.params, result.seconds)
            note += f" · saved to `{project_name}` history (#{row['id']})"
        before = images[-1].resize(result.image.size)
        return result.image, note, (before, result.image)

    def on_plan(first, second, third, width, height):
        images = [im for im in (first, second, third) if im is not None]
        size = common.output_size(width, height) or \
            (editor.default_size(images[-1]) if images else (1024, 1024))
        plan, verdict = editor.memory_plan(size, max(1, len(images)))
        return "```\n" + "\n".join(plan.lines() + [verdict.message]) + "\n```"

    def on_project(project_name):
        choices = common.adapter_choices(store, project_name)
        return ([gr.Dropdown(choices=choices) for _ in range(ADAPTER_SLOTS)]
                + [common.history(store, project_name)])

    inputs = [project, image, *extra, prompt, negative, seed, steps, cfg, width, height, *slots]
    plan_button.click(on_plan, [image, *extra, width, height], status, api_name="edit_plan")
    run.click(on_edit, inputs, [output, status, slider], api_name="edit", concurrency_limit=1,
              concurrency_id="gpu").then(
        lambda p: common.history(store, p), project, gallery, api_name=False)
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_name=False, queue=False)
    common.wire_pair_and_cancel(store, editor, project, pair_id, use_pair, cancel, image, prompt,
                                target, pair_api="use_pair")
    pickers = slots[::2]
    for trigger in (project.change, refresh.click):
        trigger(on_project, project, [*pickers, gallery], api_name=False)

    def on_select(project_name, evt: gr.SelectData):
        return common.edit_details(store, project_name, evt.index)

    gallery.select(on_select, [project], details, api_name=False)
    return on_project, project, [*pickers, gallery]
