"""Reading the dataset folder and sizing its images the way the reference does.

`image` is the training TARGET (the edited result) and `edit_image` the INPUT (the source),
as DiffSynth-Studio's UnifiedDataset reads them (see docs/design.md, "Data semantics").
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Union

from PIL import Image

from studio.dataset.checks import SIZE_MULTIPLE, train_size

REQUIRED_COLUMNS = ("image", "edit_image", "prompt")


class DatasetError(ValueError):
    pass


class ImageCell(Protocol):
    """An image kept elsewhere than in a file of its own (a parquet cell): it reads its
    bytes on demand, as a Path does, so the encoder and the cache key take either."""

    def read_bytes(self) -> bytes: ...


StoredImage = Union[Path, ImageCell]


@dataclass(frozen=True)
class Pair:
    target: StoredImage               # `image`: what the model learns to produce
    inputs: tuple[StoredImage, ...]   # `edit_image`: one image, or up to 3 for the Plus models
    prompt: str
    sample_id: str


def _rows(metadata: Path) -> list[dict]:
    suffix = metadata.suffix.lower()
    if suffix == ".csv":
        with metadata.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix == ".jsonl":
        return [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    if suffix == ".json":
        return json.loads(metadata.read_text(encoding="utf-8"))
    raise DatasetError(f"{metadata}: unsupported metadata format (use .csv, .json or .jsonl)")


def _input_list(value) -> list[str]:
    """`edit_image` holds one path, or (2509/2511) a list, as JSON text in a CSV cell."""
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value or "").strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return [text] if text else []


def load_pairs(base: str | Path, metadata: str | Path | None = None) -> list[Pair]:
    base = Path(base).expanduser().resolve()
    metadata = Path(metadata).expanduser().resolve() if metadata else base / "metadata_edit.csv"
    if not metadata.is_file():
        raise DatasetError(f"{metadata}: metadata file not found")
    rows = _rows(metadata)
    if not rows:
        raise DatasetError(f"{metadata}: no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise DatasetError(f"{metadata}: missing column(s) {', '.join(missing)}")
    pairs, problems = [], []
    for number, row in enumerate(rows, start=2 if metadata.suffix.lower() == ".csv" else 1):
        where = f"{metadata.name} row {number}"
        target = base / str(row.get("image") or "")
        inputs = [base / p for p in _input_list(row.get("edit_image"))]
        prompt = row.get("prompt")
        if not row.get("image"):
            problems.append(f"{where}: empty 'image'")
        elif not target.is_file():
            problems.append(f"{where}: 'image' file {target} not found")
        if not inputs:
            problems.append(f"{where}: empty 'edit_image'")
        problems += [f"{where}: 'edit_image' file {p} not found" for p in inputs if not p.is_file()]
        if not prompt or not str(prompt).strip():
            problems.append(f"{where}: empty 'prompt'")
        pairs.append(Pair(target, tuple(inputs), str(prompt or ""),
                          str(row.get("sample_id") or number)))
    if problems:
        raise DatasetError("dataset problems:\n" + "\n".join(f"  - {p}" for p in problems))
    return pairs


def load_rgb(image: StoredImage) -> Image.Image:
    with Image.open(image if isinstance(image, Path) else io.BytesIO(image.read_bytes())) as im:
        return im.convert("RGB")


def target_size(width: int, height: int, max_pixels: int,
                fixed: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) of a training image: `fixed`, else the reference's rule (train_size),
    never under one 16-pixel block (the dataset checks flag such pairs before training)."""
    if fixed:
        return fixed
    return tuple(max(SIZE_MULTIPLE, side) for side in train_size(width, height, max_pixels))


def sized_image(path: StoredImage, max_pixels: int,
                fixed: tuple[int, int] | None = None) -> Image.Image:
    """A dataset image as training sees it: loaded as RGB, then cropped and resized to its
    target_size."""
    image = load_rgb(path)
    return crop_and_resize(image, *target_size(image.width, image.height, max_pixels, fixed))


def crop_and_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover (width, height) with bilinear filtering, then centre-crop
    (ImageCropAndResize.crop_and_resize in the reference)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    scale = max(width / image.width, height / image.height)
    image = TF.resize(image, [round(image.height * scale), round(image.width * scale)],
                      interpolation=InterpolationMode.BILINEAR)
    return TF.center_crop(image, [height, width])


def reference_edit_size(width: int, height: int, area: int = 1024 * 1024) -> tuple[int, int]:
    """The conditioning image's size: about `area` pixels with the same aspect ratio, sides
    rounded to multiples of 32 (calculate_dimensions in DiffSynth's QwenImageUnit_EditImageEmbedder
    and in diffusers' QwenImageEditPipeline)."""
    ratio = width / height
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(32, round(w / 32) * 32), max(32, round(h / 32) * 32)


def load_validation_pairs(args) -> list[Pair]:
    """The pairs of --validation_metadata_path, else of <dataset>/metadata_validation.csv if
    there is one; [] without either. Without --dataset_base_path (a parquet run), the
    validation file's paths are relative to its own folder."""
    path, base = args.validation_metadata_path, args.dataset_base_path
    if path is None and base:
        default = Path(base).expanduser() / "metadata_validation.csv"
        path = default if default.is_file() else None
    if not path:
        return []
    return load_pairs(base or Path(path).expanduser().resolve().parent, path)
