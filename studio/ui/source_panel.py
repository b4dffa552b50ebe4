"""The Dataset tab's attached parquet source: shards too big to import, read in place by the
trainer. Attaching, sampling and what it allows live in studio/dataset/attached.py.

The app may be reachable by others and attaching reads server paths (the data is on the
server): only parquet files are opened (attached.require_parquet_spec), and nothing of them
is shown but the sample's locations, ids, image sizes and prompts.
"""
from __future__ import annotations

import gradio as gr

from ..dataset.attached import (CAN, CANNOT, attach_parquet, require_parquet_spec, sample,
                                table_row)
from ..store import NotFoundError, Store
from .common import user_error

SAMPLE_HEADERS = ["location", "id", "image sizes", "prompt", "problems"]
SHOWN_PROBLEMS = 20
LIMITS = ("**With an attached source you can:**\n" + "".join(f"\n- {line}" for line in CAN)
          + "\n\n**You cannot:**\n" + "".join(f"\n- {line}" for line in CANNOT))


def current(store: Store, name: str | None) -> str:
    # The record only: reading rows here would decode images on every project switch.
    if not name or store.get_project(name) is None:
        return summary(None)
    return summary(store.sources.get(name))


def summary(record: dict | None) -> str:
    if record is None:
        return "No source attached."
    good = record["checked"] - record["checked_bad"]
    return (f"`{record['parquet']}`: {record['files']} file(s), {record['rows']:,} rows, "
            f"{'/'.join(record['layouts'])} layout; {good} of {record['checked']} checked rows "
            f"can train" + (f" · columns {record['columns']}" if record.get("columns") else ""))


def build(store: Store, project: gr.Dropdown) -> None:
    with gr.Accordion("Attached parquet source (read in place)", open=False):
        with gr.Row():
            path = gr.Textbox(label="Parquet on the server", scale=3,
                              placeholder="/data/shards, /data/train.parquet or /data/**/*.parquet")
            columns = gr.Textbox(label="Columns", scale=2,
                                 placeholder="source=…,target=…,prompt=…[,id=…] (default: detected)")
        with gr.Row():
            attach = gr.Button("Attach", variant="primary", scale=0, elem_id="src-attach")
            detach = gr.Button("Detach", variant="stop", scale=0, elem_id="src-detach")
            count = gr.Number(value=10, precision=0, minimum=1, maximum=200, label="Sample rows",
                              scale=0, min_width=120)
            spread = gr.Checkbox(label="Spread over the source (else the first rows)", scale=1)
            show = gr.Button("Sample", scale=0, elem_id="src-sample")
        # A callable value is re-evaluated on each page load: it shows the current source.
        status = gr.Markdown(lambda: current(store, project.value), elem_id="src-status")
        rows = gr.Dataframe(headers=SAMPLE_HEADERS, interactive=False, wrap=True,
                            elem_id="src-rows")
        gr.Markdown(LIMITS)

    def record_of(name):
        if not name:
            raise gr.Error("Choose or create a project first.")
        try:
            return store.sources.get(name)
        except NotFoundError as exc:
            raise user_error(exc)

    def on_attach(name, spec, cols, progress=gr.Progress()):
        record_of(name)
        try:
            record, checked = attach_parquet(
                store, name, require_parquet_spec(spec), (cols or "").strip() or None,
                progress=lambda done, total: progress((done, total), desc="counting rows",
                                                      unit="files"))
        except (ValueError, FileNotFoundError) as exc:
            raise gr.Error(str(exc))
        bad = [r for r in checked if r.problems]
        lines = [summary(record)] + [f"- {r.where}: {r.problem}" for r in bad[:SHOWN_PROBLEMS]]
        if len(bad) > SHOWN_PROBLEMS:
            lines.append(f"- … and {len(bad) - SHOWN_PROBLEMS} more")
        return "\n".join(lines), [table_row(r) for r in checked]

    def on_sample(name, n, spread_out):
        record = record_of(name)
        if record is None:
            raise gr.Error("This project has no attached source.")
        try:
            _, found = sample(record, max(1, min(int(n or 10), 200)), bool(spread_out))
        except (ValueError, FileNotFoundError) as exc:  # moved or changed since attaching
            raise gr.Error(str(exc))
        return [table_row(r) for r in found]

    def on_detach(name):
        record_of(name)
        had = store.sources.detach(name)
        return ("Detached; its files stay where they are." if had else summary(None)), []

    attach.click(on_attach, [project, path, columns], [status, rows], api_name="dataset_attach")
    show.click(on_sample, [project, count, spread], [rows], api_name="dataset_source_sample")
    detach.click(on_detach, [project], [status, rows], api_name="dataset_detach")
    project.change(lambda name: (current(store, name), []), [project], [status, rows],
                   api_name="dataset_source")
