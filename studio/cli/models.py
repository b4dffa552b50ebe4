"""`demo-model`: build the embedded random-weight demo model."""
from __future__ import annotations

import time
from pathlib import Path

from ..engine.demo_model import build_demo_model
from ..paths import demo_model_dir, projects_dir


def register(sub) -> None:
    p = sub.add_parser("demo-model", help="build the tiny random-weight demo model")
    p.add_argument("--out", default=None, help="folder (default: <projects>/_models/demo)")
    p.add_argument("--plus", action="store_true",
                   help="build it as a 2509-style multi-image (Plus) model")
    p.set_defaults(handler=run)


def run(args) -> int:
    out = Path(args.out) if args.out else demo_model_dir(projects_dir(args.projects_dir))
    started = time.perf_counter()
    path = build_demo_model(out, plus=args.plus)
    print(f"demo model written to {path} in {time.perf_counter() - started:.1f}s "
          "(random weights: its edits are noise)")
    return 0
