"""The Train tab's form: one widget per option of the table (trainer/options.py), and the
conversions between the widgets' values and TrainOptions."""
from __future__ import annotations

import gradio as gr

from ..jobs.launch import TrainOptions
from ..jobs.presets import TRAIN_PRESETS
from ..trainer.options import form_options

OPTIONS = form_options()
NAMES = [o.name for o in OPTIONS]  # the order of the event inputs
CHECKPOINTING = {"auto": None, "on": True, "off": False}


def widget(opt, value):
    """The Gradio component of one option, showing `value`."""
    w = opt.widget
    common = dict(label=w.label, info=w.info or None, elem_id=w.elem_id)
    if w.kind in ("number", "integer"):
        return gr.Number(value, precision=0 if w.kind == "integer" else None, **common)
    if w.kind == "checkbox":
        return gr.Checkbox(value, **common)
    if w.kind == "tristate":
        return gr.Radio(list(CHECKPOINTING), value=value, **common)
    if w.kind == "lora":  # the project's adapters, filled when a project is chosen, or a path
        return gr.Dropdown([], value=value or None, allow_custom_value=True, **common)
    if w.kind == "dropdown":
        return gr.Dropdown([(w.labels.get(c, c), c) for c in opt.choices or w.choices],
                           value=value, **common)
    return gr.Textbox(value, **common)


def sections() -> dict[str, list]:
    """The options by the accordion that holds them, in form order."""
    out: dict[str, list] = {}
    for opt in OPTIONS:
        out.setdefault(opt.widget.section, []).append(opt)
    return out


def options_from(model: str, env_text: str, values) -> TrainOptions:
    data = {**TrainOptions().as_dict(), "model": model or "demo"}
    for opt, value in zip(OPTIONS, values):
        if opt.unset == "zero":
            value = value or None
        if value is None and opt.kind is str:  # an emptied text or dropdown
            value = ""
        if opt.widget.kind == "tristate":
            value = CHECKPOINTING.get(value)
        if isinstance(value, float) and opt.kind is int:
            value = int(value)
        data[opt.name] = value
    env = {}
    for line in (env_text or "").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise gr.Error(f"environment line {line!r} is not KEY=VALUE")
            env[key.strip()] = value.strip()
    data["env"] = env
    return TrainOptions.from_dict(data)


def ascend_env_text() -> str:
    """The recipe's Ascend variables as editable KEY=VALUE lines (an empty value drops one)."""
    from ..engine.npu.env import OPTIONAL_ENV, RECIPE_ENV

    return "\n".join([*(f"{k}={v}" for k, v in RECIPE_ENV.items()),
                      *(f"# {k}={v}" for k, v in OPTIONAL_ENV.items())])


def form_values(options: dict) -> list:
    """The form's field values for these options (the rest at their defaults)."""
    values = {**TrainOptions().as_dict(), **options}
    shown = []
    for opt in OPTIONS:
        value = values[opt.name]
        if opt.widget.kind == "tristate":
            value = {v: k for k, v in CHECKPOINTING.items()}[value]
        shown.append(0 if value is None and opt.unset == "zero" else value)
    return shown


def preset_values(name: str) -> list:
    return form_values(TRAIN_PRESETS.get(name, {}))
