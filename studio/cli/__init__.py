"""`python -m studio …`: the studio without a browser, for SSH sessions on clusters.

Each sub-module adds its sub-commands with `register(subparsers)`; a handler gets the
parsed arguments and returns the exit status.
"""
from __future__ import annotations

import argparse
import sys

from ..engine import optional_torchao
from ..engine.savers import Savers
from ..store import NotFoundError
from . import adapters, compare, dataset, edit, models, project, recipe, sources, train

COMMAND_MODULES = (models, project, dataset, sources, train, edit, compare, adapters, recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__.splitlines()[0])
    parser.add_argument("--projects-dir", default=None,
                        help="data folder (default: $STUDIO_PROJECTS_DIR or ./projects)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, program: bool = False) -> int:
    """`program`: this process is `python -m studio` itself, not a test's call."""
    args = build_parser().parse_args(argv)
    if program:  # before anything imports diffusers, which would import torchao with it
        optional_torchao.keep_out_unless(Savers.of(args).quantized)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, NotFoundError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
