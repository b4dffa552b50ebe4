"""`adapters add/list/merge/convert/fuse/average/inspect`; adapters are `ID|FILE[:STRENGTH]`."""
from __future__ import annotations

import json
from pathlib import Path

from ..engine.lora_files import LAYOUTS
from ..jobs import adapter_tools
from ..jobs.manager import JobManager
from .project import open_store


def register(sub) -> None:
    p = sub.add_parser("adapters", help="list a project's LoRA adapters, or add a LoRA file")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="list adapters (each with its run id, step and path)")
    listing.add_argument("--project", default=None, help="default: every project")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_adapters)
    for verb in ("import", "add"):
        add = verbs.add_parser(verb, help="register a LoRA file (diffusers, DiffSynth or ComfyUI keys)")
        add.add_argument("file")
        add.add_argument("--project", required=True)
        add.add_argument("--name", default=None)
        add.set_defaults(handler=add_adapter)
    _register_tools(verbs)


def _register_tools(verbs) -> None:
    model = dict(default=None, help="base model folder or 'demo' (default: $STUDIO_MODEL or demo)")
    merge = verbs.add_parser("merge", help="merge LoRAs, a strength each, into one new adapter")
    merge.add_argument("adapters", nargs="+", metavar="ID|FILE[:STRENGTH]")
    merge.add_argument("--project", required=True)
    merge.add_argument("--name", required=True, help="the new adapter's name")
    merge.add_argument("--rank", type=int, default=None,
                       help="SVD to this rank (approximate; the error is printed). Default: "
                            "concatenate the ranks (exact)")
    merge.add_argument("--model", **model)
    merge.set_defaults(handler=lambda a: _made(adapter_tools.merge(
        open_store(a), a.project, a.adapters, a.name, a.model, a.rank)))
    conv = verbs.add_parser("convert", help="a copy keyed for diffusers, DiffSynth or ComfyUI")
    conv.add_argument("adapter", metavar="ID|FILE")
    conv.add_argument("--to", required=True, choices=list(LAYOUTS))
    conv.add_argument("--project", required=True)
    conv.add_argument("--name", default=None, help="default: NAME-LAYOUT")
    conv.add_argument("--model", **model)
    conv.set_defaults(handler=lambda a: _made(adapter_tools.convert(
        open_store(a), a.project, a.adapter, a.to, a.name, a.model)))
    fuse = verbs.add_parser("fuse", help="fuse a LoRA at a strength into the base model: a model folder")
    fuse.add_argument("adapter", metavar="ID|FILE[:STRENGTH]")
    fuse.add_argument("--name", required=True, help="the model folder's name (under <projects>/_models)")
    fuse.add_argument("--out", default=None, help="write the model folder here instead")
    fuse.add_argument("--model", **model)
    fuse.set_defaults(handler=lambda a: _made(adapter_tools.fuse(
        open_store(a), a.adapter, a.name, a.model, a.out)))
    avg = verbs.add_parser("average", help="average a run's last checkpoints (uniform or EMA)")
    avg.add_argument("adapters", nargs="*", metavar="ID|FILE", help="or these, oldest first")
    avg.add_argument("--project", required=True)
    avg.add_argument("--run", type=int, default=None, help="the run whose checkpoints to average")
    avg.add_argument("--last", type=int, default=3, help="how many of its last checkpoints (3)")
    avg.add_argument("--ema", type=float, default=None, metavar="DECAY",
                     help="EMA weights with this decay (e.g. 0.9) instead of uniform ones")
    avg.add_argument("--name", required=True)
    avg.add_argument("--model", **model)
    avg.set_defaults(handler=lambda a: _made(adapter_tools.average(
        open_store(a), a.project, a.name, a.run, a.last, a.adapters, a.ema, a.model)))
    insp = verbs.add_parser("inspect", help="rank, alpha, targets, layers, key layout, base model, origin")
    insp.add_argument("adapter", metavar="ID|FILE")
    insp.add_argument("--json", action="store_true")
    insp.set_defaults(handler=inspect_adapter)


def _made(made) -> int:
    print(made.summary)
    return 0


def inspect_adapter(args) -> int:
    facts = adapter_tools.inspect(open_store(args), args.adapter)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    for key, value in facts.items():
        if value not in (None, [], {}, ""):
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0


def list_adapters(args) -> int:
    store = open_store(args)
    JobManager(store).reconcile()  # checkpoints of running jobs become adapters
    names = [args.project] if args.project else [p["name"] for p in store.list_projects()]
    rows = [{**row, "project": name} for name in names for row in store.list_adapters(name)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no adapters yet")
    for row in rows:
        step = f"step {row['step']}" if row["step"] is not None else "-"
        origin = json.loads(row.get("origin") or "null")
        run = (f"run {row['run_id']}" if row["run_id"] else
               f"{origin['op']} of {', '.join(p['name'] for p in origin['parents'])}" if origin else "imported")
        print(f"{row['id']}\t{row['project']}\t{row['name']}\t{run}\t{step}\t{row['path']}")
    return 0


def add_adapter(args) -> int:
    path = Path(args.file)
    row = open_store(args).add_adapter(args.project, args.name or path.stem, path)
    print(f"added adapter {row['id']} ({row['name']})")
    return 0
