"""`recipe-export` (also `seed-export`, the name users know) and `follow-log`: hand a project to the reference stack (DiffSynth-Studio /
MindSpeed-MM) on a cluster, and watch such a run from its log."""
from __future__ import annotations

import json

from ..engine.models import resolve_model
from ..recipe.external_log import follow_log
from ..recipe.export import export_recipe
from .project import open_store
from ..jobs.presets import RECIPE
from .train import add_option_flags, options as train_options


def register(sub) -> None:
    p = sub.add_parser("recipe-export", aliases=["seed-export"], help="write train_qwen_image_edit_lora.sh, "
                                          "accelerate_config.yaml and the dataset for "
                                          "MindSpeed-MM / DiffSynth-Studio")
    p.add_argument("--project", required=True)
    p.add_argument("--out", required=True, help="a new folder")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    add_option_flags(p)
    p.set_defaults(handler=recipe_export)

    f = sub.add_parser("follow-log", help="progress of an external DiffSynth/MindSpeed run from its log")
    f.add_argument("file")
    f.add_argument("--json", action="store_true")
    f.set_defaults(handler=show_log)


def recipe_export(args) -> int:
    store = open_store(args)
    # Start from the reference recipe (8 Ascend NPUs, ZeRO-2); flags change single fields.
    options = train_options(args, RECIPE)
    model = resolve_model(options.model, store.root)
    script = export_recipe(store, args.project, model, args.out, options, overwrite=args.force)
    print((script.parent / "README.txt").read_text(), end="")
    print(f"wrote {script}")
    return 0


def show_log(args) -> int:
    state = follow_log(args.file)
    if args.json:
        print(json.dumps(state))
        return 0
    if not state["total"]:
        print("no training progress in the log yet")
        return 0
    speed = (f"{state['it_per_s']:.2f} it/s" if state["it_per_s"] and state["it_per_s"] >= 1
             else f"{state['s_per_it']:.2f} s/it" if state["s_per_it"] else "? it/s")
    loss = f"{state['loss']:.4f}" if state["loss"] is not None else "?"
    print(f"epoch {state['epoch']} step {state['step']}/{state['total']} · loss {loss} · {speed}"
          f" · elapsed {state['elapsed'] or '?'} · ETA {state['eta'] or '?'}")
    return 0
