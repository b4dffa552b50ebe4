"""`adapters add/list`, and turning `ID|FILE[:STRENGTH]` arguments into adapters."""
from __future__ import annotations

from pathlib import Path

from ..paths import projects_dir
from ..store import Store


def register(sub) -> None:
    p = sub.add_parser("adapters", help="list a project's LoRA adapters, or add a LoRA file")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="list adapters")
    listing.add_argument("--project", required=True)
    listing.set_defaults(handler=list_adapters)
    add = verbs.add_parser("add", help="register a LoRA file (diffusers, DiffSynth or ComfyUI keys)")
    add.add_argument("--project", required=True)
    add.add_argument("--name", default=None)
    add.add_argument("file")
    add.set_defaults(handler=add_adapter)


def open_store(args) -> Store:
    return Store(projects_dir(args.projects_dir))


def list_adapters(args) -> int:
    rows = open_store(args).list_adapters(args.project)
    if not rows:
        print(f"no adapters in {args.project} yet")
    for row in rows:
        step = f"step {row['step']}" if row["step"] is not None else "-"
        print(f"{row['id']}\t{row['name']}\t{step}\t{row['path']}")
    return 0


def add_adapter(args) -> int:
    path = Path(args.file)
    row = open_store(args).add_adapter(args.project, args.name or path.stem, path)
    print(f"added adapter {row['id']} ({row['name']})")
    return 0
