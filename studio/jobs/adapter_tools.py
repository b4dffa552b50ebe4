"""The LoRA tools on a project's adapters: each input is an adapter id or a file (with
`:STRENGTH`), each output a file under `<project>/adapters/` registered as an adapter with
its origin (operation, parents, strengths). The CLI and the Adapters tab call these; the
math and the file formats are the engine's (lora_tools, lora_fuse, lora_files)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..engine import lora_tools
from ..engine.adapters import AdapterRef, resolve_adapter
from ..engine.lora_files import LAYOUTS
from ..engine.models import resolve_model
from ..paths import safe_stem
from ..store import Store

ADAPTERS_DIR = "adapters"  # inside the project folder
FUSED_DIR = "_models"      # inside the projects folder, beside the demo model


@dataclass
class Made:
    adapter: dict | None     # the new adapter's row (None for a fused model folder)
    path: Path
    summary: str


def _ref(store: Store, text: str) -> tuple[AdapterRef, dict]:
    """`7`, `7:0.5`, `file.safetensors:0.5` -> the reference and its parent record."""
    ref = resolve_adapter(str(text), store.require_adapter)
    ident = str(text).strip().rpartition(":")[0] or str(text).strip()
    parent = {"id": int(ident) if ident.isdigit() else None, "name": ref.name,
              "path": str(ref.path), "strength": ref.strength}
    return ref, parent


def _output(store: Store, project: str, name: str, overwrite: bool = False) -> Path:
    store.require_project(project)
    if not safe_stem(name):
        raise ValueError("give the new adapter a name")
    path = store.project_dir(project) / ADAPTERS_DIR / f"{safe_stem(name)}.safetensors"
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another name")
    return path


def _register(store: Store, project: str, name: str, result, origin: dict) -> Made:
    row = store.add_adapter(project, name, result.path, origin=origin)
    return Made(row, result.path, f"adapter {row['id']} ({name}): {result.summary()}")


def merge(store: Store, project: str, specs: list[str], name: str, model: str | None = None,
          rank: int | None = None) -> Made:
    """Merge adapters at their strengths (`ID:STRENGTH`): exact, or to `rank` by SVD."""
    pairs = [_ref(store, s) for s in specs]
    out = _output(store, project, name)
    result = lora_tools.merge([(r.path, r.strength) for r, _ in pairs], out,
                              resolve_model(model, store.root), rank=rank)
    origin = {"op": "merge", "mode": "svd" if rank else "concat", "rank": rank,
              "error": result.error, "parents": [p for _, p in pairs]}
    return _register(store, project, name, result, origin)


def convert(store: Store, project: str, spec: str, layout: str, name: str | None = None,
            model: str | None = None) -> Made:
    """A copy under another tool's key layout (diffusers, diffsynth, comfyui)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose {', '.join(LAYOUTS)}")
    ref, parent = _ref(store, spec)
    name = name or f"{ref.name}-{layout}"
    out = _output(store, project, name)
    result = lora_tools.convert(ref.path, out, layout, resolve_model(model, store.root))
    origin = {"op": "convert", "layout": layout, "unmapped": result.unmapped,
              "parents": [{**parent, "strength": None}]}
    return _register(store, project, name, result, origin)


def last_checkpoints(store: Store, project: str, run_id: int, count: int) -> list[dict]:
    """A run's last `count` checkpoints whose files still exist, oldest first."""
    if count < 1:
        raise ValueError(f"average at least one checkpoint, not {count}")
    rows = [r for r in store.run_checkpoints(project).get(int(run_id), []) if Path(r["path"]).is_file()]
    if not rows:
        raise ValueError(f"run {run_id} of project {project!r} has no checkpoint files")
    return rows[-count:]


def average(store: Store, project: str, name: str, run_id: int | None = None, last: int = 3,
            specs: list[str] | None = None, ema: float | None = None, model: str | None = None) -> Made:
    """The last `last` checkpoints of a run (or the adapters `specs`, oldest first) averaged,
    uniformly or with EMA weights (`ema` = the decay)."""
    if specs:
        parents = [_ref(store, s)[1] for s in specs]
    elif run_id is not None:
        parents = [{"id": r["id"], "name": r["name"], "path": r["path"], "step": r["step"]}
                   for r in last_checkpoints(store, project, run_id, last)]
    else:
        raise ValueError("average what? give a run id or adapters")
    out = _output(store, project, name)
    result = lora_tools.average([p["path"] for p in parents], out,
                                resolve_model(model, store.root), ema=ema)
    for parent, weight in zip(parents, result.weights):
        parent["strength"] = weight
    origin = {"op": "average", "mode": f"ema {ema}" if ema is not None else "uniform",
              "run_id": run_id, "parents": parents}
    return _register(store, project, name, result, origin)


def fuse(store: Store, spec: str, name: str, model: str | None = None,
         out_dir: str | Path | None = None) -> Made:
    """A model folder with the adapter fused in at its strength (`ID:STRENGTH`)."""
    from ..engine.lora_fuse import fuse as fuse_folder

    ref, _ = _ref(store, spec)
    if not safe_stem(name):
        raise ValueError("give the fused model a name")
    out = Path(out_dir) if out_dir else store.root / FUSED_DIR / safe_stem(name)
    folder = fuse_folder(resolve_model(model, store.root), ref.path, out, ref.strength)
    return Made(None, folder, f"wrote the model folder {folder} ({ref.name} fused at "
                              f"{ref.strength}); use it with --model {folder}")


def inspect(store: Store, spec: str) -> dict:
    """The file's facts, and for a project adapter its origin as the store recorded it."""
    ref, parent = _ref(store, spec)
    facts = lora_tools.inspect(ref.path)
    row = store.require_adapter(parent["id"]) if parent["id"] is not None else None
    if row is not None:
        facts["adapter"] = {"id": row["id"], "name": row["name"], "run_id": row["run_id"],
                            "step": row["step"], "origin": json.loads(row.get("origin") or "null")}
    return facts
