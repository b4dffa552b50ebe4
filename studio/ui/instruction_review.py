"""The Dataset tab's instruction writer: propose instructions from the images in the
background, then review each proposal (source | target | difference | proposed text).

Drawing and wiring only: the writer is studio/jobs/instruction_writing.py, the review rules
studio/dataset/proposals.py, the VL model studio/engine/instruction_writer.py.
"""
from __future__ import annotations

import html

import gradio as gr
from PIL import Image

from ..dataset import proposals
from ..dataset.difference import difference_view
from ..engine.instruction_writer import (DEFAULT_MAX_WORDS, INSTRUCTION_PROMPT, VLFolderError,
                                         choose_vl_model)
from ..engine.models import resolve_model
from ..jobs.instruction_writing import InstructionJob, InstructionJobs, WriteRequest
from ..paths import demo_model_dir
from ..store import NotFoundError, Store
from .common import user_error

SCOPES = [("Pairs without an instruction", "missing"), ("Pairs the search finds", "search"),
          ("All pairs", "all")]
DEMO_NOTE = ("**Demo model: random weights, so its instructions are nonsense.** The whole "
             "path runs as with a real model; start the studio with a real Qwen-Image-Edit "
             "folder (or give a Qwen2.5-VL folder below) for real instructions.")
SHOWN = 200  # pending proposals listed at once


def model_note(store: Store, model: str, vl_model: str | None) -> str:
    """Which model would write, or why none can. `model`: a folder, or demo (not built here:
    that takes seconds, on the first run instead)."""
    vl_model = (vl_model or "").strip() or None
    if model == "demo" and not vl_model and not (demo_model_dir(store.root) / "model_index.json").is_file():
        return f"Writes with the demo model's own text encoder (built on first use).\n\n{DEMO_NOTE}"
    try:
        vl = choose_vl_model(resolve_model(model, store.root), vl_model)
    except VLFolderError as exc:
        return f"⚠ {exc}"
    return f"Writes with {vl.label}." + (f"\n\n{DEMO_NOTE}" if vl.is_demo else "")


def start(store: Store, jobs: InstructionJobs, name: str, model: str | None, vl_model: str,
          scope: str, search: str, prompt: str, max_words, engine: dict) -> str:
    """Start a background run for project `name` among this app's `jobs`."""
    request = WriteRequest(name, model=str(resolve_model(model, store.root)), vl_model=(vl_model or "").strip() or None,
                           scope=scope, search=search or None, prompt=prompt or INSTRUCTION_PROMPT,
                           max_words=int(max_words or DEFAULT_MAX_WORDS),
                           **{k: v for k, v in engine.items() if k != "before_load"})
    try:
        job = InstructionJob(store, request, before_load=engine.get("before_load"))
    except (ValueError, NotFoundError) as exc:
        raise user_error(exc)
    if not job.pair_ids:
        raise gr.Error("No pairs to write for: every pair has an instruction (choose all pairs "
                       "or a search).")
    try:
        jobs.start(job)
    except ValueError as exc:  # one is already being written for the project
        raise user_error(exc)
    return f"Started: {len(job.pair_ids)} pair(s) with {job.vl.label}."


def progress(store: Store, name: str | None,
             jobs: InstructionJobs | None = None) -> tuple[str, bool]:
    """(the latest run's progress bar as HTML, whether this app is still running it); without
    `jobs`, the stored row is trusted."""
    if not name or store.get_project(name) is None:
        return "", False
    job = store.proposals.latest_job(name)
    if job is None:
        return "No instructions written yet.", False
    ours = jobs is None or jobs.writes(name, job["id"])
    status = job["status"] if ours or job["status"] != "running" else \
        "running elsewhere (a CLI run) or interrupted"
    bar = f"<progress value='{job['done']}' max='{max(1, job['total'])}'></progress>"
    text = (f"{bar} {job['done']} / {job['total']} pairs · {status} · "
            f"{store.proposals.count(name)} pending review")
    if job.get("error"):
        text += f"<br>{html.escape(job['error'])}"
    text += "".join(f"<br>· {html.escape(note)}" for note in job["notes"][-5:])
    return text, job["status"] == "running" and ours


def cancel(jobs: InstructionJobs, name: str) -> str:
    if not jobs.cancel(name):
        return "Nothing is being written."
    return "Cancelling: the proposals written so far are kept."


def pending_rows(store: Store, name: str | None) -> list[list]:
    if not name or store.get_project(name) is None:
        return []
    return [[p["id"], p["sample_id"], p["instruction"], p["text"]]
            for p in store.proposals.pending(name, limit=SHOWN)]


def show(store: Store, name: str, proposal_id) -> tuple:
    """(proposal id, source, target, difference view, proposed text, info) of one proposal,
    or of the first pending one when `proposal_id` is None or already decided."""
    rows = store.proposals.pending(name, limit=SHOWN) if name else []
    row = next((r for r in rows if r["id"] == proposal_id), rows[0] if rows else None)
    if row is None:
        return None, None, None, None, "", "No proposals waiting for review."
    source = Image.open(store.pairs.path(name, row["source_path"])).convert("RGB")
    target = Image.open(store.pairs.path(name, row["target_path"])).convert("RGB")
    current = row["instruction"] or "(none)"
    who = " (written by a person: accepting replaces it only with the box below ticked)" \
        if proposals.person_wrote(row) else ""
    info = f"**{row['sample_id']}** · proposal #{row['id']} · current instruction: {current!r}{who}"
    return row["id"], source, target, difference_view(source, target), row["text"], info


def decide(store: Store, name: str, proposal_id, text: str, action: str, overwrite: bool) -> str:
    if proposal_id is None:
        raise gr.Error("No proposal selected.")
    try:
        if action == "accept":
            result = proposals.accept(store, name, {int(proposal_id): text}, overwrite)
        elif action == "reject":
            result = proposals.reject(store, name, [int(proposal_id)])
        else:
            result = proposals.accept_all(store, name, overwrite)
    except (NotFoundError, ValueError) as exc:
        raise user_error(exc)
    return result.summary()


def undo(store: Store, name: str, pair_id) -> str:
    if pair_id is None:
        raise gr.Error("Select a pair in the table first.")
    try:
        return proposals.undo(store, name, int(pair_id))
    except NotFoundError as exc:
        raise user_error(exc)


def build(store: Store, project: gr.Dropdown, search: gr.Textbox, model: str | None,
          engine: dict | None = None) -> None:
    """`model`: the edit model folder or demo; `engine`: device, dtype, savers and before_load for
    the writer, as the editor runs (empty: the engine's defaults)."""
    engine = engine or {}
    jobs = InstructionJobs()
    with gr.Accordion("Write instructions from the images", open=False):
        note = gr.Markdown(model_note(store, model, None), elem_id="ds-writer-model")
        with gr.Row():
            scope = gr.Radio(SCOPES, value="missing", label="Write for", scale=2)
            vl_model = gr.Textbox(label="VL model folder (optional)", scale=2,
                                  placeholder="/models/Qwen2.5-VL-7B-Instruct",
                                  info="default: the model's own text encoder, if it has lm_head")
            max_words = gr.Number(value=DEFAULT_MAX_WORDS, precision=0, minimum=1,
                                  label="Max words", scale=1)
        prompt = gr.Textbox(value=INSTRUCTION_PROMPT, lines=4, label="Prompt ({examples}: a few "
                            "of the dataset's instructions; {max_words}: the limit)")
        with gr.Row():
            start_button = gr.Button("Write proposals", variant="primary", elem_id="ds-write")
            cancel_button = gr.Button("Cancel", variant="stop", elem_id="ds-write-cancel")
        status = gr.HTML(elem_id="ds-write-status")
        timer = gr.Timer(1.0, active=False)
        pending = gr.Dataframe(headers=["proposal", "sample_id", "current", "proposed"],
                               interactive=False, wrap=True, elem_id="ds-proposals")
        chosen = gr.State(None)
        with gr.Row():
            source = gr.Image(type="pil", label="Source", interactive=False)
            target = gr.Image(type="pil", label="Target", interactive=False)
            diff = gr.Image(type="pil", label="Difference", interactive=False)
            with gr.Column():
                text = gr.Textbox(label="Proposed instruction (edit before accepting)", lines=3,
                                  elem_id="ds-proposal-text")
                info = gr.Markdown()
                with gr.Row():
                    accept_button = gr.Button("Accept", variant="primary", elem_id="ds-accept")
                    reject_button = gr.Button("Reject", elem_id="ds-reject")
                    all_button = gr.Button("Accept all", elem_id="ds-accept-all")
                overwrite = gr.Checkbox(label="May replace instructions a person wrote")
        result = gr.Markdown(elem_id="ds-review-result")

    review = [chosen, source, target, diff, text, info]

    def refresh(name):
        return (pending_rows(store, name), *show(store, name, None))

    def on_start(name, vl, sc, query, template, words):
        if not name:
            raise gr.Error("Choose or create a project first.")
        message = start(store, jobs, name, model, vl, sc, query, template, words, engine)
        return message, gr.Timer(active=True)

    def on_tick(name):
        bar, alive = progress(store, name, jobs)
        return (bar, gr.Timer(active=alive), *refresh(name))

    def on_pick(name, evt: gr.SelectData):
        try:
            return show(store, name, int(evt.row_value[0]))
        except (TypeError, ValueError, IndexError):
            return show(store, name, None)

    def on_decide(action):
        def handler(name, proposal_id, proposed, replace):
            return (decide(store, name, proposal_id, proposed, action, replace), *refresh(name))
        return handler

    vl_model.change(lambda vl: model_note(store, model, vl), [vl_model], [note], api_name=False)
    start_button.click(on_start, [project, vl_model, scope, search, prompt, max_words],
                       [result, timer], api_name="dataset_write_instructions")
    timer.tick(on_tick, [project], [status, timer, pending, *review], api_name=False)
    cancel_button.click(lambda name: cancel(jobs, name), [project], [result],
                        api_name="dataset_write_cancel")
    project.change(on_tick, [project], [status, timer, pending, *review], api_name=False)
    pending.select(on_pick, [project], review, api_name=False)
    for button, action in ((accept_button, "accept"), (reject_button, "reject"),
                           (all_button, "all")):
        button.click(on_decide(action), [project, chosen, text, overwrite],
                     [result, pending, *review], api_name=f"dataset_proposal_{action}")
