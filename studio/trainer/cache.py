"""Encoding pairs once: text-encoder outputs and VAE latents, cached on disk.

The text encoder (7B) and the VAE are frozen, so their outputs for a pair never change while
the pair's files, the model and the resolution stay the same. They are computed once, written
as one safetensors file per pair under a key that hashes exactly those inputs, and the two
models are then dropped so that the transformer loop has the device to itself.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..engine.devices import free_memory
from ..engine.savers import Savers, apply_text_encoder_savers
from .data import Pair, reference_edit_size, sized_image
from .run_files import PROGRESS, replacing, write_json

CACHE_VERSION = 1
SETTINGS = "settings"  # <root>/settings/<digest>.json: every encoding settings keyed under root
PLUS_CONDITION_AREA = 384 * 384  # the Plus pipeline's VL-encoder image area (CONDITION_IMAGE_SIZE)


def model_fingerprint(model_path: Path) -> str:
    """Hash of what decides the encodings: configs of the encoding components and the
    weight files' names and sizes (hashing 16 GB of weights would take longer than encoding)."""
    h = hashlib.sha256()
    for name in ("model_index.json",):
        h.update((model_path / name).read_bytes())
    for sub in ("text_encoder", "vae", "processor", "tokenizer"):
        for f in sorted((model_path / sub).glob("*")):
            if f.suffix == ".json" or f.suffix == ".txt":
                h.update(f.name.encode() + f.read_bytes())
            elif f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_component(model_path: Path, name: str, dtype: torch.dtype, device: torch.device):
    """One component of the pipeline (as model_index.json names its class), loaded straight
    onto `device`."""
    library, class_name = json.loads((model_path / "model_index.json").read_text())[name]
    cls = getattr(importlib.import_module(library), class_name)
    return cls.from_pretrained(model_path / name, dtype=dtype, device_map={"": str(device)})


def encoding_pipeline(model_path: Path, pipeline_class: str, device, dtype: torch.dtype,
                      savers: Savers = Savers()):
    """The pipeline without its transformer, its text encoder (with its savers: fp8 storage,
    or its layers waiting in host memory) and VAE on `device`.

    On an accelerator with no text-encoder saver, the text encoder loads straight onto the
    device: no host copy of its 16 GB, once per process. A saver needs it in host memory first
    (offload keeps it there; fp8 is cast there, so the device never holds its bf16 weights)."""
    import diffusers

    model_path, device = Path(model_path), torch.device(device)
    direct = device.type != "cpu" and not (savers.text_encoder_offload or savers.fp8_text_encoder)
    given = {"text_encoder": load_component(model_path, "text_encoder", dtype, device)} if direct else {}
    pipe = getattr(diffusers, pipeline_class).from_pretrained(model_path, transformer=None,
                                                              dtype=dtype, **given)
    if not direct and not apply_text_encoder_savers(pipe.text_encoder, device, dtype, savers):
        pipe.text_encoder.to(device)
    pipe.vae.to(device)  # small: from host memory
    return pipe


class PairEncoder:
    """The pipeline without its transformer, turning a pair into training tensors."""

    def __init__(self, model_path: Path, pipeline_class: str, device, dtype: torch.dtype,
                 max_pixels: int, fixed_size: tuple[int, int] | None, edit_auto_resize: bool,
                 savers: Savers = Savers()):
        self.plus = pipeline_class == "QwenImageEditPlusPipeline"
        self.pipe = encoding_pipeline(model_path, pipeline_class, device, dtype, savers)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.dtype = device, dtype
        self.max_pixels, self.fixed_size, self.edit_auto_resize = max_pixels, fixed_size, edit_auto_resize

    def _sized(self, path: Path, fixed=None):
        return sized_image(path, self.max_pixels, fixed)

    def _latents(self, image) -> torch.Tensor:
        pixels = self.pipe.image_processor.preprocess(image, image.height, image.width)
        pixels = pixels.unsqueeze(2).to(self.device, self.dtype)  # (B, C, T=1, H, W)
        return self.pipe._encode_vae_image(pixels, generator=None)  # normalised, argmax

    @torch.no_grad()
    def encode(self, pair: Pair) -> dict[str, torch.Tensor]:
        out = {"target": self._latents(self._sized(pair.target, self.fixed_size))}
        prompt_images = []
        for i, path in enumerate(pair.inputs):
            # The reference passes edit_image through the same max_pixels sizing first.
            image = self._sized(path)
            vae_image = image
            if self.edit_auto_resize:
                w, h = reference_edit_size(image.width, image.height)
                vae_image = self.pipe.image_processor.resize(image, h, w)
            if self.plus:
                w, h = reference_edit_size(image.width, image.height, PLUS_CONDITION_AREA)
                prompt_images.append(self.pipe.image_processor.resize(image, h, w))
            else:
                prompt_images.append(vae_image)
            out[f"edit_{i}"] = self._latents(vae_image)
        # The pipeline's own template, drop_idx and VL processing.
        embeds, mask = self.pipe.encode_prompt(
            prompt=[pair.prompt], image=prompt_images if self.plus else prompt_images[0],
            device=self.device)
        out["prompt_embeds"] = embeds
        out["prompt_mask"] = (mask if mask is not None
                              else torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device))
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def release(self) -> None:
        """Free the device for the transformer loop (dropped, not copied back to the host)."""
        self.pipe = None
        free_memory(self.device)


class EncodedCache:
    def __init__(self, root: Path, model_fp: str, settings: dict):
        self.settings = json.dumps({"version": CACHE_VERSION, "model": model_fp, **settings},
                                   sort_keys=True)
        self.root = Path(root)
        self._record_settings()

    def _record_settings(self) -> None:
        """Leave these settings beside the entries: the studio cannot know them (a run picks
        its dtype on its device), yet needs them to key a project's pairs as the run does,
        to count what is encoded and prune what no pair uses. Written once, atomically (every
        process of a run writes the same text); best effort, so a read-only cache still serves."""
        digest = hashlib.sha256(self.settings.encode()).hexdigest()[:16]
        record = self.root / SETTINGS / f"{digest}.json"
        if record.is_file():
            return
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            with replacing(record) as tmp:
                tmp.write_text(self.settings, encoding="utf-8")
        except OSError:
            pass

    @classmethod
    def recorded(cls, root: Path) -> list["EncodedCache"]:
        """A cache for each settings recorded under `root`, keying exactly as the runs that
        recorded them (their settings text is the key's first input); records nothing."""
        caches = []
        for record in sorted((Path(root) / SETTINGS).glob("*.json")):
            cache = cls.__new__(cls)
            cache.root, cache.settings = Path(root), record.read_text(encoding="utf-8")
            caches.append(cache)
        return caches

    def described(self) -> dict:
        """The settings as a dict: version, model fingerprint, max_pixels, dtype, …"""
        return json.loads(self.settings)

    def key(self, pair: Pair) -> str:
        h = hashlib.sha256(self.settings.encode())
        h.update(pair.prompt.encode("utf-8"))
        for path in (pair.target, *pair.inputs):
            h.update(b"\0file\0" + path.read_bytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict[str, torch.Tensor]:
        return load_file(self.path(key))

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as tmp:  # readers never see half a file
            save_file(tensors, str(tmp))


class EncodingProgress:
    """How far the encoding of the missing pairs is, in <output>/progress.json, so that the
    studio's pre-encode follows it without reading the log. Rank 0 alone writes: while it
    runs, `done` is its own count times the processes (their shares are equal and encode at
    the same pace); `ended`, after the last barrier, writes the exact count."""

    def __init__(self, output: Path, cache: EncodedCache, missing_keys: Sequence[str],
                 pairs: int, processes: int = 1, writes: bool = True):
        self.path = Path(output) / PROGRESS
        self.cache, self.missing, self.pairs = cache, list(missing_keys), pairs
        self.processes, self.writes, self.own = processes, writes, 0
        self._write(0)

    def encoded_one(self) -> None:
        self.own += 1
        self._write(min(len(self.missing), self.own * self.processes))

    def ended(self) -> None:
        """The pairs encoded now, every process's (a stop leaves some of them out)."""
        if self.writes:
            self._write(sum(self.cache.has(key) for key in self.missing))

    def _write(self, done: int) -> None:
        if self.writes:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"phase": "encode", "done": done, "total": len(self.missing),
                                   "cached": self.pairs - len(self.missing)})


def keys_for(caches: Sequence[EncodedCache], pair: Pair) -> list[str]:
    """Each cache's key of `pair` (as EncodedCache.key), reading its images once."""
    hashes = [hashlib.sha256(cache.settings.encode()) for cache in caches]
    for h in hashes:
        h.update(pair.prompt.encode("utf-8"))
    for image in (pair.target, *pair.inputs):
        data = b"\0file\0" + image.read_bytes()
        for h in hashes:
            h.update(data)
    return [h.hexdigest() for h in hashes]


def entry_files(root: Path) -> Iterator[os.DirEntry]:
    """The entries under a cache root (<root>/<2 hex>/<key>.safetensors), without its
    settings records, parquet scans or half-written temporary files."""
    try:
        folders = [d for d in os.scandir(root) if len(d.name) == 2 and d.is_dir()]
    except FileNotFoundError:
        return
    for folder in folders:
        for entry in os.scandir(folder.path):
            if entry.name.endswith(".safetensors") and not entry.name.startswith("."):
                yield entry
