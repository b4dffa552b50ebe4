"""`compare`: one input through several adapters, strengths and seeds, as a labelled grid."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from ..engine.compare import BASE, compare, plan_columns
from .edit import (add_model_options, add_sampler_options, load_images, make_editor, parse_size,
                   resolve_adapters)
from .project import open_store


def parse_numbers(text: str | None, kind=float) -> list:
    if not text:
        return []
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare adapters side by side on one input")
    add_model_options(p)
    p.add_argument("--image", action="append", required=True, help="input image (up to 3 for 2509/2511)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--adapters", required=True,
                   help="comma-separated: base, adapter ids or LoRA files, each with optional "
                        ":STRENGTH; run:ID stands for every checkpoint of training run ID")
    p.add_argument("--strengths", default=None, help="e.g. 0.5,1.0: every adapter at each strength")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one grid row each")
    add_sampler_options(p)
    p.add_argument("--out", required=True, help="grid PNG; the parameters go beside it as .json")
    p.set_defaults(handler=run)


def expand_runs(args, names: list[str]) -> list[str]:
    """`run:ID` -> the ids of that run's checkpoints, in step order."""
    if not any(n.startswith("run:") for n in names):
        return names
    store = open_store(args)
    out = []
    for name in names:
        if not name.startswith("run:"):
            out.append(name)
            continue
        run = store.runs.require(int(name[4:])) if name[4:].isdigit() else None
        rows = store.run_checkpoints(store.runs.project_name(run)).get(run["id"]) if run else None
        if not rows:
            raise ValueError(f"{name}: no training run with checkpoints by that id "
                             f"(python -m studio runs list)")
        out += [str(r["id"]) for r in rows]
    return out


def run(args) -> int:
    images = load_images(args.image)
    names = expand_runs(args, [t.strip() for t in args.adapters.split(",") if t.strip()])
    refs = resolve_adapters(args, [n for n in names if n != BASE])
    choices = [None if n == BASE else refs.pop(0) for n in names]
    columns = plan_columns(choices, parse_numbers(args.strengths))
    seeds = parse_numbers(args.seeds, int) or [0]
    editor = make_editor(args)
    with tqdm(desc="comparing", unit="step") as bar:
        def progress(step, total):
            bar.total = total
            bar.update(step - bar.n)

        result = compare(editor, images, args.prompt, columns, seeds, args.negative,
                         steps=args.steps, true_cfg_scale=args.cfg, size=parse_size(args.size),
                         progress=progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.grid.save(out)
    out.with_suffix(".json").write_text(json.dumps(result.params, indent=2))
    print(f"wrote {out} ({len(seeds)} rows x {len(columns)} columns, {result.seconds:.1f}s) "
          f"and {out.with_suffix('.json')}")
    return 0
