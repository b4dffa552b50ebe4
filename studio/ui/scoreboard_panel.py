"""The Train tab's scoreboard: each checkpoint's edit metrics on the validation pairs, a plot
of the one the user picks, the best checkpoint marked, and "Use in Compare"."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from ..store import NotFoundError
from ..engine.compare import BASE
from ..engine.presets import SAMPLER_PRESETS
from ..jobs import planning, results
from ..jobs.launch import TrainOptions
from ..trainer import scoreboard
from .common import user_error

DEFAULT_METRIC = "ssim"
NO_PAIRS = ("This run has no validation pairs, so its checkpoints are not scored: hold some pairs "
            "out in the Dataset tab (split `validation`) before the next run.")


def _cell(value, worst: str | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" + (f" (worst: {worst})" if worst else "")


def frame(rows: list[dict], metric: str) -> pd.DataFrame:
    """Checkpoint × metric: the mean over the validation pairs, the worst pair named; ★ marks
    the best checkpoint by `metric`."""
    top = scoreboard.best(rows, metric)
    table = []
    for r in rows:
        line = {"": "★" if r["step"] == top else "", "step": r["step"],
                scoreboard.LABELS[scoreboard.VAL_LOSS]: _cell(r[scoreboard.VAL_LOSS], None)}
        for name in scoreboard.CHOICES[1:]:
            line[scoreboard.LABELS[name]] = _cell(r[name], r["worst"].get(name))
        table.append(line)
    return pd.DataFrame(table)


def curve(rows: list[dict], metric: str) -> pd.DataFrame | None:
    points = [(r["step"], r[metric]) for r in rows if r.get(metric) is not None]
    return pd.DataFrame(points, columns=["step", "value"]) if points else None


def summary(rows: list[dict], metric: str) -> str:
    if not any(r["pairs"] for r in rows) and not any(r[scoreboard.VAL_LOSS] is not None for r in rows):
        return NO_PAIRS
    top = scoreboard.best(rows, metric)
    text = f"**{scoreboard.LABELS[metric]}**: {scoreboard.meaning(metric)}"
    text += f"\n\nBest checkpoint by it: **step {top}**." if top is not None else \
        "\n\nNo checkpoint has this score yet."
    note = scoreboard.preview_note(rows)
    return text + (f"\n\nScored previews: {note}." if note else "")


CHEAP = "Cheap (default): {steps} steps, no CFG"
CARD = "The model card's steps and CFG"
PREVIEW_NOTE = ("Cheap previews (the default) are quick, but they are not what a deployment "
                "shows: it runs the model card's steps and CFG, or a few-step LoRA. Pick what you "
                "will ship with; the scoreboard records which settings scored.")


def preview_controls(store, model: gr.Textbox, steps: gr.Number, cfg: gr.Number) -> None:
    """"Previews like": fills the sample steps and CFG fields from a choice."""
    default = TrainOptions()
    cheap = CHEAP.format(steps=default.sample_inference_steps)
    choice = gr.Dropdown([cheap, CARD, *(k for k, v in SAMPLER_PRESETS.items() if v)], value=cheap,
                         label="Previews like", elem_id="train-preview-like",
                         info="few-step presets: also set the LoRA file below")
    gr.Markdown(PREVIEW_NOTE)

    def on_choice(name, model_spec):
        if name == CARD:
            try:
                settings = planning.sampler_defaults(store, model_spec or "demo")
            except (ValueError, OSError) as exc:
                raise user_error(exc)
        else:
            settings = SAMPLER_PRESETS.get(name) or {"steps": default.sample_inference_steps,
                                                     "true_cfg_scale": default.sample_true_cfg_scale}
        return settings["steps"], settings["true_cfg_scale"]

    choice.input(on_choice, [choice, model], [steps, cfg], api_name="train_preview_like")


def build(store, run_pick: gr.Dropdown, timer: gr.Timer) -> tuple[gr.Button, gr.Dropdown]:
    """The panel; returns its "Use in Compare" button and metric picker, which the app wires
    to the Compare tab with `compare_picks`."""
    with gr.Accordion("Scoreboard: edit quality per checkpoint", open=True):
        metric = gr.Dropdown([(scoreboard.LABELS[m], m) for m in scoreboard.CHOICES],
                             value=DEFAULT_METRIC, label="Rank checkpoints by",
                             elem_id="train-score-metric")
        text = gr.Markdown(elem_id="train-score-summary")
        table = gr.Dataframe(interactive=False, wrap=True, elem_id="train-scoreboard")
        plot = gr.LinePlot(x="step", y="value", height=220, elem_id="train-score-plot",
                           title="The chosen metric against step")
        use = gr.Button("Use in Compare (best and its neighbours)", elem_id="train-score-compare")

    def on_refresh(run_id, chosen):
        if not run_id:
            return "", None, None
        try:
            rows = results.scoreboard_rows(store, int(run_id))
        except NotFoundError:
            return "", None, None
        return summary(rows, chosen), frame(rows, chosen), curve(rows, chosen)

    run_pick.change(on_refresh, [run_pick, metric], [text, table, plot], api_name="train_scoreboard")
    metric.change(on_refresh, [run_pick, metric], [text, table, plot], api_name=False)
    timer.tick(on_refresh, [run_pick, metric], [text, table, plot], api_name=False,
               show_progress="hidden")
    return use, metric


def compare_picks(store, run_id, metric: str) -> list[str]:
    """The Compare columns: base, then the best checkpoint's adapter and its neighbours'."""
    if not run_id:
        raise gr.Error("Choose a run first.")
    try:
        return [BASE, *(str(a["id"]) for a in results.best_adapters(store, int(run_id), metric))]
    except (NotFoundError, ValueError) as exc:
        raise user_error(exc)
