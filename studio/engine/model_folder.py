"""Checks a Qwen-Image-Edit model folder (diffusers layout) before anything loads it.

Loading a 40 GB model only to fail on a missing shard wastes minutes, so every problem is
found up front and reported together, naming the file. Shards are found through the
`*.safetensors.index.json` files, never listed by hand.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EDIT_PIPELINES = {
    "QwenImageEditPipeline": 1,       # Qwen-Image-Edit: one input image
    "QwenImageEditPlusPipeline": 3,   # 2509 / 2511: up to three input images
}
WEIGHTED = ("transformer", "text_encoder", "vae")
REQUIRED = ("transformer", "text_encoder", "vae", "tokenizer", "processor", "scheduler")
CONFIG_FILES = {
    "scheduler": ("scheduler_config.json",),
    "tokenizer": ("tokenizer_config.json",),
    "processor": ("preprocessor_config.json", "processor_config.json"),
}


class ModelFolderError(ValueError):
    def __init__(self, folder: Path, problems: list[str]):
        self.folder, self.problems = folder, problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{folder} is not a usable Qwen-Image-Edit model folder:\n{lines}\n"
            "Expected the diffusers layout (model_index.json, transformer/, text_encoder/, "
            "vae/, tokenizer/, processor/, scheduler/), as served for Qwen/Qwen-Image-Edit."
        )


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    pipeline_class: str
    max_images: int
    is_demo: bool
    native_area: int  # default output area in pixels (the real model works at ~1 MP)

    @property
    def sampler_defaults(self) -> dict:
        """The model card's sampler settings (steps, true CFG); few steps on the demo."""
        return {"steps": 4 if self.is_demo else 50, "true_cfg_scale": 4.0}


def shard_index(folder: Path) -> tuple[dict[Path, set[str]], list[str]]:
    """A component folder's *.safetensors.index.json files and the shards each names, and a
    problem for each index that cannot be read."""
    shards, problems = {}, []
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards[index] = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError) as exc:
            problems.append(f"{index}: unreadable shard index ({exc})")
    return shards, problems


def _weight_problems(folder: Path) -> list[str]:
    shards, problems = shard_index(folder)
    if shards or problems:
        for index, names in shards.items():
            missing = sorted(s for s in names if not (folder / s).is_file())
            problems += [f"{folder / s}: missing shard (listed in {index.name})" for s in missing]
        return problems
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return []
    return [f"{folder}: no weights (*.safetensors or *.safetensors.index.json)"]


def inspect_model_folder(path: str | Path) -> ModelInfo:
    """Validate `path` and tell which pipeline serves it; raise ModelFolderError otherwise."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ModelFolderError(folder, [f"{folder}: folder does not exist"])
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelFolderError(folder, [f"{index_file}: missing"])
    try:
        index = json.loads(index_file.read_text())
    except ValueError as exc:
        raise ModelFolderError(folder, [f"{index_file}: not valid JSON ({exc})"]) from exc

    problems = []
    pipeline_class = index.get("_class_name", "")
    if pipeline_class not in EDIT_PIPELINES:
        problems.append(
            f"{index_file}: _class_name is {pipeline_class!r}, not an edit pipeline "
            f"({' or '.join(EDIT_PIPELINES)})"
        )
    for name in REQUIRED:
        sub = folder / name
        if name not in index:
            problems.append(f"{index_file}: no '{name}' component")
        if not sub.is_dir():
            problems.append(f"{sub}: missing folder")
            continue
        if name in WEIGHTED:
            if not (sub / "config.json").is_file():
                problems.append(f"{sub / 'config.json'}: missing")
            problems += _weight_problems(sub)
        elif not any((sub / f).is_file() for f in CONFIG_FILES[name]):
            problems.append(f"{sub / CONFIG_FILES[name][0]}: missing")
    if problems:
        raise ModelFolderError(folder, problems)

    marker = folder / "studio_demo.json"
    demo = json.loads(marker.read_text()) if marker.is_file() else {}
    return ModelInfo(
        path=folder,
        pipeline_class=pipeline_class,
        max_images=EDIT_PIPELINES[pipeline_class],
        is_demo=bool(demo.get("demo")),
        native_area=int(demo.get("native_area", 1024 * 1024)),
    )
