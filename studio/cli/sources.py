"""`dataset attach | rows | source | detach`: parquet shards attached to a project in place,
for datasets too big to import (studio/dataset/attached.py says what that allows)."""
from __future__ import annotations

import argparse
import json

from tqdm import tqdm

from ..dataset.attached import (CAN, CANNOT, CHECKED_ROWS, attach_parquet, checked_rows, first_rows,
                               notes, open_source)
from ..dataset.parquet_rows import Row
from .project import open_store


def register(sub) -> None:
    """Adds these verbs to the `dataset` command, which cli/dataset.py registers first."""
    verbs = _verbs(sub.choices["dataset"])
    att = verbs.add_parser("attach", help="attach parquet shards in place (nothing is copied)")
    att.add_argument("--project", required=True)
    att.add_argument("--parquet", required=True, metavar="FILE|DIR|GLOB",
                     help="a parquet file, a folder (every *.parquet under it) or a quoted glob")
    att.add_argument("--columns", default=None, help="source=COL,target=COL,prompt=COL[,id=COL]")
    att.add_argument("--check", type=int, default=CHECKED_ROWS, metavar="N",
                     help=f"rows to check, spread over the source (default {CHECKED_ROWS})")
    att.set_defaults(handler=run_attach)

    smp = verbs.add_parser("rows", aliases=["sample"],
                           help="show rows of the attached source, with their problems")
    smp.add_argument("--project", required=True)
    smp.add_argument("--n", type=int, default=5, help="how many rows (default 5)")
    smp.add_argument("--spread", action="store_true",
                     help="rows spread over the whole source instead of the first ones")
    smp.set_defaults(handler=run_rows)

    show = verbs.add_parser("source", help="the attached source, and what it allows")
    show.add_argument("--project", required=True)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_source)

    det = verbs.add_parser("detach", help="forget the attached source (its files stay)")
    det.add_argument("--project", required=True)
    det.set_defaults(handler=run_detach)


def _verbs(parser: argparse.ArgumentParser):
    # argparse has no public accessor for a parser's sub-commands; finding them here keeps
    # the verbs of an attached source out of cli/dataset.py.
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


class _FileBar:
    """A tqdm bar over the files whose metadata is read to count the rows."""

    def __init__(self):
        self.bar = tqdm(desc="counting rows", unit="file")

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def describe(row: Row) -> str:
    sizes = "  ".join(f"{role} {w}×{h}" for role, (w, h) in row.sizes.items())
    text = f"{row.where}\tid {row.sample_id}\t{sizes}\t{json.dumps(row.prompt, ensure_ascii=False)}"
    return text + "".join(f"\n    {n}" for n in notes(row))


def print_limits() -> None:
    print("with an attached source you can:")
    print("".join(f"  - {line}\n" for line in CAN), end="")
    print("you cannot:")
    print("".join(f"  - {line}\n" for line in CANNOT), end="")


def run_attach(args) -> int:
    store = open_store(args)
    bar = _FileBar()
    try:
        record, rows = attach_parquet(store, args.project, args.parquet, args.columns,
                                      check=args.check, progress=bar)
    finally:
        bar.close()
    print(f"attached to {args.project}: {record['parquet']} ({record['files']} file(s), "
          f"{record['rows']:,} rows, {'/'.join(record['layouts'])} layout); nothing was copied")
    bad = [r for r in rows if r.problems]
    print(f"checked {len(rows)} rows spread over it: {len(rows) - len(bad)} can train, "
          f"{len(bad)} cannot")
    for row in bad[:20]:
        print(f"  {row.where}: {row.problem}")
    print_limits()
    return 0


def _record(store, project: str) -> dict:
    record = store.sources.get(project)
    if record is None:
        raise ValueError(f"project {project!r} has no attached source; attach one with: "
                         f"python -m studio dataset attach --project {project} --parquet GLOB")
    return record


def run_rows(args) -> int:
    store = open_store(args)
    source = open_source(_record(store, args.project))
    rows = checked_rows(source, source.spread(args.n)) if args.spread else first_rows(source, args.n)
    for row in rows:
        print(describe(row))
    print(f"{len(rows)} of {source.total_rows:,} rows in {len(source.shards)} file(s)")
    return 0


def run_source(args) -> int:
    record = _record(open_store(args), args.project)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"{record['parquet']}: {record['files']} file(s), {record['rows']:,} rows when attached "
          f"({record['attached_at']}), {'/'.join(record['layouts'])} layout"
          + (f", columns {record['columns']}" if record.get("columns") else ""))
    print_limits()
    return 0


def run_detach(args) -> int:
    store = open_store(args)
    had = store.sources.detach(args.project)
    print(f"detached the source of {args.project}" if had else f"{args.project} had no source")
    return 0
