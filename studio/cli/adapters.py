"""`adapters add/list`, and turning `ID|FILE[:STRENGTH]` arguments into adapters."""
from __future__ import annotations

import json
from pathlib import Path

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
        run = f"run {row['run_id']}" if row["run_id"] else "imported"
        print(f"{row['id']}\t{row['project']}\t{row['name']}\t{run}\t{step}\t{row['path']}")
    return 0


def add_adapter(args) -> int:
    path = Path(args.file)
    row = open_store(args).add_adapter(args.project, args.name or path.stem, path)
    print(f"added adapter {row['id']} ({row['name']})")
    return 0
