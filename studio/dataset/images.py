"""Checking one image file and storing it once under the project, content-addressed.

An image is decoded fully on import, so a truncated file fails here rather than in the
middle of a training run. JPEG and PNG files that need no conversion are stored byte for
byte; anything else (CMYK, 16-bit, palette, alpha, grayscale, EXIF-rotated, other formats)
is converted to 8-bit RGB and re-encoded.
"""
from __future__ import annotations

import hashlib
import io
import os
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Larger than any photo a trainer would use (8192×8192), far below what would exhaust memory.
MAX_IMAGE_PIXELS = 8192 * 8192
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png"}
_ORIENTATION_TAG = 0x0112


class BadImage(ValueError):
    """The file cannot be used as an image; the message says why."""


@dataclass
class PreparedImage:
    hash: str          # sha256 of the bytes as received: the same file always maps here
    ext: str
    payload: bytes     # what gets stored: the original bytes, or the converted RGB image
    width: int
    height: int
    notes: list[str] = field(default_factory=list)

    @property
    def relative_path(self) -> str:
        return f"images/{self.hash[:2]}/{self.hash}.{self.ext}"


def _open(data: bytes, name: str) -> Image.Image:
    if not data:
        raise BadImage(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadImage(f"{name}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage(f"{name}: not an image (no known image format)") from None
    except Exception as exc:  # Pillow raises many kinds on garbage headers
        raise BadImage(f"{name}: truncated or corrupt image, header unreadable ({exc})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise BadImage(f"{name}: refused as a decompression bomb: {width}×{height} = "
                       f"{width * height:,} pixels, limit {MAX_IMAGE_PIXELS:,}")
    if width < 1 or height < 1:
        raise BadImage(f"{name}: image has no pixels ({width}×{height})")
    return image


def _decode(image: Image.Image, name: str, draft: bool = False) -> None:
    """Decode every pixel so a truncated or corrupt file fails now, not during training.

    With `draft`, a JPEG is decoded at 1/8 scale: every entropy-coded block is still read
    (so truncation and corruption still fail) but the costly full-size IDCT is skipped.
    """
    try:
        if draft and image.format == "JPEG":
            image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    except Exception as exc:
        raise BadImage(f"{name}: truncated or corrupt {image.format or 'image'} ({exc})") from None


def _is_16_bit_png(data: bytes, image: Image.Image) -> bool:
    # IHDR's bit depth is byte 24 of a PNG; Pillow shows 16-bit RGB as plain "RGB".
    return image.format == "PNG" and len(data) > 24 and data[24] == 16


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range onto 8 bits
        notes.append(f"{mode} (high bit depth) converted to 8-bit RGB")
        return Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("palette image converted to RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        notes.append("alpha channel flattened onto white")
        return flat
    if mode != "RGB":
        notes.append(f"{mode} converted to RGB")
        return image.convert("RGB")
    return image


def prepare_image(data: bytes, name: str) -> PreparedImage:
    """Decode, check and (only if needed) convert one image; raises BadImage with a reason."""
    image = _open(data, name)
    jpeg = image.format == "JPEG"
    if not jpeg:
        _decode(image, name)  # reading a PNG's EXIF may need its chunks after the pixels
    digest = hashlib.sha256(data).hexdigest()
    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    high_depth = _is_16_bit_png(data, image)
    if (image.format in KEPT_FORMATS and image.mode == "RGB" and orientation in (1, None)
            and not high_depth):
        size = image.size  # before draft() shrinks it
        if jpeg:
            _decode(image, name, draft=True)
        return PreparedImage(digest, KEPT_FORMATS[image.format], data, *size)
    if jpeg:
        _decode(image, name)
    notes: list[str] = []
    if image.format not in KEPT_FORMATS:
        notes.append(f"{image.format or 'unknown format'} re-encoded")
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    if high_depth and image.mode == "RGB":
        notes.append("16-bit PNG converted to 8-bit RGB")
    image = _to_rgb(image, notes)
    buffer = io.BytesIO()
    # A photo stays JPEG (a PNG of it would be ~10× larger); everything else is lossless PNG.
    if image_format_is_photo(data):
        image.save(buffer, "JPEG", quality=95)
        ext = "jpg"
    else:
        image.save(buffer, "PNG")
        ext = "png"
    return PreparedImage(digest, ext, buffer.getvalue(), *image.size, notes=[f"{name}: {n}" for n in notes])


def decoded_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) of an image that decodes whole (BadImage otherwise), converting
    nothing: the check of an image read in place, which is never stored."""
    image = _open(data, name)
    size = image.size  # before draft() shrinks a JPEG
    _decode(image, name, draft=True)
    return size


def image_format_is_photo(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def store_image(project_dir: Path, prepared: PreparedImage) -> str:
    """Write the image under <project>/images/ unless it is already there; returns its relative path."""
    relative = prepared.relative_path
    path = project_dir / relative
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        temporary.write_bytes(prepared.payload)
        os.replace(temporary, path)  # never a half-written file under the final name
    return relative
