"""`compare`: one input through several adapters, strengths and seeds, as a labelled grid."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..engine.compare import BASE, compare, plan_columns
from ..engine.edit_metrics import metrics_line
from .edit import (add_model_options, add_sampler_options, load_images, make_editor, pair_item,
                   parse_size, resolve_adapters)
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
    p.add_argument("--image", action="append", default=[],
                   help="input image (up to 3 for 2509/2511)")
    p.add_argument("--prompt", default=None, help="the instruction (default: the pair's)")
    p.add_argument("--project", default=None, help="with --pair: the project holding it")
    p.add_argument("--pair", type=int, default=None, metavar="ID",
                   help="a dataset pair as the input: its sources, instruction and target; "
                        "each column is scored against it")
    p.add_argument("--target", default=None, metavar="FILE",
                   help="the edit's intended result for the first --image: each column is "
                        "scored against this pair")
    p.add_argument("--adapters", required=True,
                   help="comma-separated: base, adapter ids or LoRA files, each with optional "
                        ":STRENGTH; run:ID stands for every checkpoint of training run ID")
    p.add_argument("--strengths", default=None, help="e.g. 0.5,1.0: every adapter at each strength")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one grid row each")
    add_sampler_options(p)
    p.add_argument("--out", default=None, help="grid PNG; the parameters go beside it as .json")
    p.add_argument("--json", action="store_true",
                   help="print the parameters and metrics as JSON (then --out is optional)")
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


def inputs(args) -> tuple[list[Image.Image], str, Image.Image | None]:
    """(input images, instruction, target or None) from --pair or --image/--target."""
    if args.pair is not None:
        if not args.project or args.image or args.target:
            raise ValueError("--pair needs --project, and takes no --image or --target")
        store = open_store(args)
        item = pair_item(store.pairs, args.project, store.pairs.require(args.project, args.pair))
        images, prompt, target = item.inputs, item.prompt, item.target
    else:
        if not args.image:
            raise ValueError("give --image (and --prompt), or --project and --pair")
        images, prompt, target = args.image, "", args.target
    prompt = args.prompt or prompt
    if not prompt.strip():
        raise ValueError("give the instruction with --prompt")
    return (load_images([str(i) for i in images]), prompt,
            load_images([str(target)])[0] if target else None)


def run(args) -> int:
    if not (args.out or args.json):
        raise ValueError("give --out GRID.png, --json or both")
    images, prompt, target = inputs(args)
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

        result = compare(editor, images, prompt, columns, seeds, args.negative,
                         steps=args.steps, true_cfg_scale=args.cfg, size=parse_size(args.size),
                         target=target, progress=progress)
    # With --json, stdout is the JSON alone; the notes go to stderr.
    note = sys.stderr if args.json else sys.stdout
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.grid.save(out)
        out.with_suffix(".json").write_text(json.dumps(result.params, indent=2))
        print(f"wrote {out} ({len(seeds)} rows x {len(columns)} columns, {result.seconds:.1f}s) "
              f"and {out.with_suffix('.json')}", file=note)
    for column, metrics in zip(columns, result.metrics or []):
        print(f"{column.label}: {metrics_line(metrics)}", file=note)
    if args.json:
        print(json.dumps(result.params, indent=2))
    return 0
