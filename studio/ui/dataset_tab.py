"""The Dataset tab: import pairs, validate, browse and edit them, export the training folder.

It only draws and forwards: importing, checking and exporting live in studio/dataset and
the pair store.
"""
from __future__ import annotations

import os

import gradio as gr
from PIL import Image

from ..dataset import importers
from ..dataset.difference import difference_view
from ..dataset.export import FORMATS, export_dataset
from ..dataset.instructions import Rewrite, rewrite_instructions, set_instruction
from ..dataset.synthetic_pairs import add_synthetic_pairs
from ..dataset.split import hold_out, parse_count
from ..dataset.validate import validate_project
from ..engine.models import MODEL_ENV
from ..jobs import encode_cache, planning
from ..jobs.presets import TRAIN_PRESETS
from ..store import NotFoundError, Store
from . import instruction_review, source_panel
from .common import user_error

PAGE_SIZE = 20
THUMBNAIL = 256
COLUMNS = ["id", "sample_id", "split", "status", "instruction", "issues"]


def _thumbnail(path) -> Image.Image:
    image = Image.open(path)
    image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG decodes at reduced size: fast pages
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def _report_text(report) -> str:
    return "\n".join(report.lines(limit=100))


def _show_page(store: Store, name, text, number):
    """Gallery images, table rows, a summary line and the page number actually shown."""
    pairs = store.pairs
    if not name or store.get_project(name) is None:
        return [], [], "No project selected.", 1
    total = pairs.count(name, search=text or None)
    pages = max(1, -(-total // PAGE_SIZE))
    number = min(max(1, int(number or 1)), pages)
    rows = pairs.page(name, page=number - 1, page_size=PAGE_SIZE, search=text or None)
    images = []
    for row in rows:
        source = _thumbnail(pairs.path(name, row["source_path"]))
        target = _thumbnail(pairs.path(name, row["target_path"]))
        images.append((source, f"{row['sample_id']} · source"))
        images.append((target, f"{row['sample_id']} · {row['instruction'][:80]}"))
        images.append((difference_view(source, target, THUMBNAIL), f"{row['sample_id']} · difference"))
    data = [[r["id"], r["sample_id"], r["split"], r["status"], r["instruction"],
             "; ".join(i["message"] for i in r["issues"] if i["level"] != "info")] for r in rows]
    counts = pairs.counts(name)
    info = (f"Page {number} of {pages} · {total} matching · project: {counts['total']} pairs "
            f"({counts['validation']} validation, {counts['warning']} with warnings, "
            f"{counts['error']} with errors)")
    return images, data, info, number


def _preset_resizes(preset: str) -> bool:
    """Whether a preset's runs resize the edit image to ~1 MP (TrainOptions' default)."""
    return TRAIN_PRESETS[preset].get("edit_image_auto_resize", True)


def _writer_engine(editor) -> dict:
    """The instruction writer runs as the editor does, and frees the editor's pipeline first
    when both would share an accelerator."""
    if editor is None:
        return {}
    return {"device": editor.device, "dtype": editor.dtype, "savers": editor.savers,
            "before_load": lambda device: editor.shares_device(device.split(":")[0])
            and editor.release()}


def build(store: Store, project: gr.Dropdown, model: str | None = None, editor=None) -> None:
    """`model`: the model the encode cache row counts for at first (default: the studio's);
    `editor`: the studio's, whose model, device and savers the instruction writer uses."""
    pairs = store.pairs
    pre_encodes = encode_cache.PreEncodes(store)

    def need(name):
        if not name:
            raise gr.Error("Choose or create a project first.")
        try:
            store.require_project(name)
        except NotFoundError as exc:
            raise user_error(exc)
        return name

    # -- import -------------------------------------------------------------
    with gr.Accordion("Add pairs", open=True):
        with gr.Row():
            source = gr.Image(type="filepath", label="Source (before)", elem_id="ds-source")
            target = gr.Image(type="filepath", label="Target (edited)", elem_id="ds-target")
            with gr.Column():
                instruction = gr.Textbox(label="Instruction", lines=3, elem_id="ds-instruction")
                add_one = gr.Button("Add pair", variant="primary", elem_id="ds-add-pair")
        uploads = gr.File(file_count="multiple", label="Many pairs: images paired by name "
                          "(source_<id>/edited_<id>, before/after, …) with .txt or CSV/JSON "
                          "instructions, or named in a metadata_edit.csv/JSON/JSONL uploaded "
                          "with them; or one zip or parquet file",
                          elem_id="ds-uploads")
        with gr.Accordion("Parquet options", open=False):
            with gr.Row():
                limit = gr.Number(value=0, precision=0, label="Limit rows (0 = all)")
                offset = gr.Number(value=0, precision=0, label="Skip first rows")
                columns = gr.Textbox(label="Columns", placeholder="source=…,target=…,prompt=… (default: detected)")
                min_score = gr.Textbox(label="Minimum scores", placeholder="clip_sim_dit=0.25, ssim=0.6")
        with gr.Row():
            import_button = gr.Button("Import files", variant="primary", elem_id="ds-import")
            samples_button = gr.Button("Add sample pairs", elem_id="ds-samples")
        import_report = gr.Textbox(label="Import report", lines=6, interactive=False, elem_id="ds-import-report")
    source_panel.build(store, project)  # shards too big to import, read in place

    # -- validate -----------------------------------------------------------
    with gr.Accordion("Validate", open=False):
        validate_button = gr.Button("Validate all pairs", elem_id="ds-validate")
        validate_summary = gr.Markdown(elem_id="ds-validate-summary")
        problems = gr.Dataframe(headers=["sample_id", "level", "message"], interactive=False,
                                elem_id="ds-problems")

    # -- encode cache -------------------------------------------------------
    with gr.Accordion("Encode cache", open=False):
        with gr.Row():
            enc_model = gr.Textbox(value=model or os.environ.get(MODEL_ENV) or "demo",
                                   label="Model", scale=3, info="model folder, or demo")
            enc_preset = gr.Dropdown(list(TRAIN_PRESETS), value="Demo on CPU", scale=2,
                                     label="Settings of the run preset")
            enc_pixels = gr.Number(value=0, precision=0, label="Max pixels", scale=1,
                                   info="0 = the preset's")
            enc_resize = gr.Checkbox(value=_preset_resizes("Demo on CPU"), scale=1,
                                     label="Edit image at ~1 MP")
        with gr.Row():
            count_button = gr.Button("Count", scale=0, min_width=80, elem_id="ds-encode-count")
            encode_button = gr.Button("Pre-encode now", scale=0, elem_id="ds-encode-now")
            clear_button = gr.Button("Clear cache", variant="stop", scale=0, elem_id="ds-encode-clear")
            enc_status = gr.Markdown("Count reads every pair's images: press it to see how many "
                                     "are encoded.", elem_id="ds-encode-status")
        enc_timer = gr.Timer(2.0, active=False)

    # -- browse -------------------------------------------------------------
    with gr.Row():
        search = gr.Textbox(label="Search instructions", scale=3, elem_id="ds-search")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=1, elem_id="ds-page")
        previous = gr.Button("◀", scale=0, min_width=50)
        following = gr.Button("▶", scale=0, min_width=50)
        refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="ds-refresh")
    # Callable values are re-evaluated on each page load, so a reload shows current pairs.
    first_page = lambda part: lambda: _show_page(store, project.value, "", 1)[part]  # noqa: E731
    page_info = gr.Markdown(value=first_page(2), elem_id="ds-page-info")
    gallery = gr.Gallery(value=first_page(0), label="Source | target | difference", columns=6,
                         height=420,
                         elem_id="ds-gallery")
    table = gr.Dataframe(value=first_page(1), headers=COLUMNS, interactive=False, wrap=True,
                         elem_id="ds-table")
    selected = gr.State(None)
    with gr.Row():
        chosen_source = gr.Image(type="pil", label="Source", interactive=False)
        chosen_target = gr.Image(type="pil", label="Target", interactive=False)
        chosen_difference = gr.Image(type="pil", label="Difference (where and how much)",
                                     interactive=False)
        with gr.Column():
            chosen_text = gr.Textbox(label="Instruction of the selected pair", lines=4, elem_id="ds-edit-text")
            with gr.Row():
                save = gr.Button("Save instruction", elem_id="ds-save")
                undo = gr.Button("Undo last instruction change", elem_id="ds-undo")
            with gr.Row():
                to_validation = gr.Button("Mark as validation", elem_id="ds-mark-validation")
                to_train = gr.Button("Mark as training")
                delete = gr.Button("Delete pair", variant="stop", elem_id="ds-delete")
            chosen_info = gr.Markdown(elem_id="ds-selected-info")

    with gr.Row():
        held_out = gr.Textbox(value="10%", label="Hold out for validation (pairs or %)", scale=2,
                              info="random training pairs; sample edits and the validation loss use them")
        hold_button = gr.Button("Hold out", scale=1, elem_id="ds-hold-out")
    with gr.Accordion("Rewrite instructions (all pairs, or those the search finds)", open=False):
        with gr.Row():
            prefix = gr.Textbox(label="Prefix", placeholder='e.g. "sks style, " (added once)')
            suffix = gr.Textbox(label="Suffix")
            find = gr.Textbox(label="Replace this text")
            replace = gr.Textbox(label="with")
        with gr.Row():
            preview_rewrite = gr.Button("Preview")
            apply_rewrite = gr.Button("Apply", variant="primary", elem_id="ds-rewrite")
        rewrite_result = gr.Markdown(elem_id="ds-rewrite-result")
    writer_model = str(editor.info.path) if editor is not None else model or os.environ.get(MODEL_ENV)
    instruction_review.build(store, project, search, writer_model or "demo", _writer_engine(editor))

    # -- export -------------------------------------------------------------
    with gr.Accordion("Export", open=False):
        with gr.Row():
            fmt = gr.Dropdown(list(FORMATS), value="recipe", label="Format")
            out_dir = gr.Textbox(label="Output folder (on the server)", placeholder="/data/my_dataset")
            force = gr.Checkbox(label="Write into a folder that is not empty")
        export_button = gr.Button("Export", elem_id="ds-export")
        export_result = gr.Markdown(elem_id="ds-export-result")

    # -- handlers -----------------------------------------------------------
    def show_page(name, text, number):
        return _show_page(store, name, text, number)

    browse_outputs = [gallery, table, page_info, page]

    def on_add_one(name, src, tgt, text, text_search, number):
        name = need(name)
        if not src or not tgt:
            raise gr.Error("Upload both the source and the edited image.")
        report = importers.import_pair(store, name, src, tgt, text or "")
        return (_report_text(report), *show_page(name, text_search, number))

    def on_import(name, files, lim, off, cols, scores, text_search, number, progress=gr.Progress()):
        name = need(name)
        if not files:
            raise gr.Error("Choose files to import first.")
        paths = [getattr(f, "name", f) for f in files]
        options = {"progress": lambda done, total: progress((done, total) if total else None,
                                                            desc="importing", unit="rows"),
                   "limit": int(lim) if lim else None, "offset": int(off or 0),
                   "columns": cols or None,
                   "min_scores": [s.strip() for s in (scores or "").split(",") if s.strip()]}
        try:
            report = importers.import_uploads(store, name, paths, **options)
        except (ValueError, FileNotFoundError) as exc:
            raise gr.Error(str(exc))
        return (_report_text(report), *show_page(name, text_search, number))

    def on_samples(name, text_search, number):
        name = need(name)
        return (_report_text(add_synthetic_pairs(store, name)), *show_page(name, text_search, number))

    def on_validate(name, progress=gr.Progress()):
        name = need(name)
        report = validate_project(store, name, progress=lambda d, t: progress((d, t), desc="validating"))
        rows = [[p["sample_id"], p["level"], p["message"]] for p in report.problems[:1000]]
        return report.summary(), rows

    def on_select(name, evt: gr.SelectData):
        try:
            pair_id = int(evt.row_value[0])  # the table's first column is the pair id
        except (TypeError, ValueError, IndexError):
            return None, None, None, None, "", ""
        if not name:
            return None, None, None, None, "", ""
        pair = pairs.get(name, pair_id)
        if pair is None:
            return None, None, None, None, "", "That pair no longer exists."
        info = (f"**{pair['sample_id']}** (#{pair['id']}) · {pair['split']} · {pair['status']} · "
                f"source {pair['source_width']}×{pair['source_height']}, target "
                f"{pair['target_width']}×{pair['target_height']}")
        info += "".join(f"\n- {i['level']}: {i['message']}" for i in pair["issues"])
        source = Image.open(pairs.path(name, pair["source_path"])).convert("RGB")
        target = Image.open(pairs.path(name, pair["target_path"])).convert("RGB")
        return (pair["id"], source, target, difference_view(source, target), pair["instruction"],
                info)

    def selected_or_fail(name, pair_id):
        name = need(name)
        if pair_id is None:
            raise gr.Error("Select a pair in the table first.")
        return name

    def on_save(name, pair_id, text, text_search, number):
        name = selected_or_fail(name, pair_id)
        pair = set_instruction(store, name, pair_id, text or "")
        return f"Saved. Status: {pair['status']}.", *show_page(name, text_search, number)

    def on_undo(name, pair_id, text_search, number):
        name = selected_or_fail(name, pair_id)
        message = instruction_review.undo(store, name, pair_id)
        return (message, pairs.require(name, pair_id)["instruction"],
                *show_page(name, text_search, number))

    def on_split(split):
        def handler(name, pair_id, text_search, number):
            name = selected_or_fail(name, pair_id)
            pairs.set_split(name, [pair_id], split)
            return f"Marked as {split}.", *show_page(name, text_search, number)
        return handler

    def on_delete(name, pair_id, text_search, number):
        name = selected_or_fail(name, pair_id)
        encode_cache.forget(store, name, [pair_id])  # first: it keys the pair by its files
        pairs.delete(name, [pair_id])
        return None, None, None, None, "", "Deleted.", *show_page(name, text_search, number)

    def on_hold_out(name, amount, text_search, number):
        name = need(name)
        try:
            chosen = hold_out(store, name, parse_count(amount, pairs.count(name, split="train")))
        except ValueError as exc:
            raise gr.Error(str(exc))
        return f"Held out {len(chosen)} pair(s) for validation.", *show_page(name, text_search, number)

    def on_rewrite(dry_run):
        def handler(name, pre, suf, old, new, text_search, number):
            name = need(name)
            try:
                changes = rewrite_instructions(store, name, Rewrite(pre or "", suf or "", old or "",
                                                                    new or ""),
                                               text_search, dry_run=dry_run)
            except ValueError as exc:
                raise gr.Error(str(exc))
            verb = "would change" if dry_run else "changed"
            lines = [f"**{len(changes)} instruction(s) {verb}**"]
            lines += [f"- `{sid}`: {old_text!r} → {new_text!r}" for sid, old_text, new_text in changes[:10]]
            return "\n".join(lines), *show_page(name, text_search, number)
        return handler

    def on_export(name, chosen, folder, overwrite, progress=gr.Progress()):
        name = need(name)
        if not (folder or "").strip():
            raise gr.Error("Give an output folder.")
        try:
            result = export_dataset(store, name, folder.strip(), chosen, overwrite=overwrite,
                                    progress=lambda d, t: progress((d, t), desc="exporting"))
        except ValueError as exc:
            raise gr.Error(str(exc))
        return "\n\n".join([result.summary(), *result.notes])

    def encoding_options(model_spec, preset, pixels, resize):
        fields = {"edit_image_auto_resize": bool(resize)}
        if pixels:
            fields["max_pixels"] = int(pixels)
        return encode_cache.encoding_options((model_spec or "").strip() or "demo", preset, **fields)

    def on_count(name, model_spec, preset, pixels, resize):
        name = need(name)
        opts = encoding_options(model_spec, preset, pixels, resize)
        try:
            folder = planning.model_folder(store, opts.model)
            return encode_cache.status_line(encode_cache.status(store, name, folder, opts), opts.model)
        except (ValueError, OSError) as exc:
            raise user_error(exc)

    def on_pre_encode(name, model_spec, preset, pixels, resize):
        name = need(name)
        try:
            done = pre_encodes.start(name, encoding_options(model_spec, preset, pixels, resize))
        except (ValueError, OSError) as exc:
            raise user_error(exc)
        return encode_cache.progress_line(done), gr.Timer(active=True)

    def on_encode_progress(name):
        if not name or store.get_project(name) is None:
            return "", gr.Timer(active=False)
        done = pre_encodes.progress(name)
        return encode_cache.progress_line(done), gr.Timer(active=done["state"] == "running")

    def on_clear(name):
        name = need(name)
        try:
            freed = encode_cache.clear(store, name)
        except ValueError as exc:
            raise user_error(exc)
        return f"Encode cache cleared: {freed / 2**20:.1f} MB freed."

    browse_inputs = [project, search, page]
    add_one.click(on_add_one, [project, source, target, instruction, search, page],
                  [import_report, *browse_outputs], api_name="dataset_add_pair")
    import_button.click(on_import, [project, uploads, limit, offset, columns, min_score, search, page],
                        [import_report, *browse_outputs], api_name="dataset_import")
    samples_button.click(on_samples, [project, search, page], [import_report, *browse_outputs],
                         api_name="dataset_samples")
    validate_button.click(on_validate, [project], [validate_summary, problems], api_name="dataset_validate")
    search.submit(lambda n, s: show_page(n, s, 1), [project, search], browse_outputs, api_name="dataset_page")
    page.submit(show_page, browse_inputs, browse_outputs, api_name=False)
    previous.click(lambda n, s, p: show_page(n, s, (p or 1) - 1), browse_inputs, browse_outputs, api_name=False)
    following.click(lambda n, s, p: show_page(n, s, (p or 1) + 1), browse_inputs, browse_outputs, api_name=False)
    project.change(show_page, browse_inputs, browse_outputs, api_name=False)
    refresh.click(show_page, browse_inputs, browse_outputs, api_name=False)
    table.select(on_select, [project],
                 [selected, chosen_source, chosen_target, chosen_difference, chosen_text, chosen_info],
                 api_name=False)
    undo.click(on_undo, [project, selected, search, page], [chosen_info, chosen_text, *browse_outputs],
               api_name="dataset_undo_instruction")
    save.click(on_save, [project, selected, chosen_text, search, page], [chosen_info, *browse_outputs],
               api_name="dataset_save_instruction")
    to_validation.click(on_split("validation"), [project, selected, search, page],
                        [chosen_info, *browse_outputs], api_name=False)
    to_train.click(on_split("train"), [project, selected, search, page],
                   [chosen_info, *browse_outputs], api_name=False)
    delete.click(on_delete, [project, selected, search, page],
                 [selected, chosen_source, chosen_target, chosen_difference, chosen_text, chosen_info,
                  *browse_outputs], api_name=False)
    hold_button.click(on_hold_out, [project, held_out, search, page], [chosen_info, *browse_outputs],
                      api_name="dataset_hold_out")
    rewrite_inputs = [project, prefix, suffix, find, replace, search, page]
    preview_rewrite.click(on_rewrite(True), rewrite_inputs, [rewrite_result, *browse_outputs],
                          api_name="dataset_rewrite_preview")
    apply_rewrite.click(on_rewrite(False), rewrite_inputs, [rewrite_result, *browse_outputs],
                        api_name="dataset_rewrite")
    encoding_inputs = [project, enc_model, enc_preset, enc_pixels, enc_resize]
    enc_preset.change(_preset_resizes, [enc_preset], [enc_resize], api_name=False)
    count_button.click(on_count, encoding_inputs, [enc_status], api_name="dataset_encode_count")
    encode_button.click(on_pre_encode, encoding_inputs, [enc_status, enc_timer],
                        api_name="dataset_encode")
    enc_timer.tick(on_encode_progress, [project], [enc_status, enc_timer],
                   api_name="dataset_encode_progress")
    project.change(on_encode_progress, [project], [enc_status, enc_timer], api_name=False)
    clear_button.click(on_clear, [project], [enc_status], api_name="dataset_encode_clear")
    export_button.click(on_export, [project, fmt, out_dir, force], [export_result], api_name="dataset_export")
