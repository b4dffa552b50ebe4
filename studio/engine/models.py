"""Turning what the user names (`demo`, a folder, nothing) into a model folder."""
from __future__ import annotations

import os
from pathlib import Path

from ..paths import demo_model_dir

MODEL_ENV = "STUDIO_MODEL"


def resolve_model(spec: str | None, projects: Path) -> Path:
    """`demo` (or nothing configured) means the embedded demo model, built on first use
    under the projects folder; anything else is a model folder path."""
    spec = spec or os.environ.get(MODEL_ENV) or "demo"
    if spec != "demo":
        return Path(spec).expanduser().resolve()
    folder = demo_model_dir(projects)
    if not (folder / "model_index.json").is_file():
        from .demo_model import build_demo_model

        build_demo_model(folder)
    return folder
