"""Reusing the expensive, adapter-independent encodings of an edit.

The prompt embedding (Qwen2.5-VL over the instruction and the ~1 MP conditioning image) and
the VAE latents of the input image do not depend on the LoRA adapters, which only touch the
transformer, nor on the seed (the VAE latents are the distribution's mode). A comparison of
N adapters x seeds therefore encodes once. The cache wraps the pipeline instance's own
methods, so the pipeline's preprocessing stays exactly as diffusers does it.
"""
from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import torch
from PIL import Image


def _fingerprint(value) -> object:
    if isinstance(value, Image.Image):
        return ("img", value.size, value.mode, hashlib.sha1(value.tobytes()).hexdigest())
    if isinstance(value, torch.Tensor):
        data = value.detach().to("cpu").contiguous()
        return ("t", tuple(data.shape), str(data.dtype),
                hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest())
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    if isinstance(value, torch.Generator):
        return None  # only the mode of the latent distribution is used, never a sample
    return repr(value)


class EncodingMemo:
    """In memory, per pipeline: a small LRU per wrapped method (the trainer's cache on disk is
    trainer/cache.py). Calls must be serialised by the caller (the Editor's lock)."""

    def __init__(self, size: int = 8):
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict = OrderedDict()

    def clear(self) -> None:
        self._entries.clear()

    def wrap(self, pipe, method_name: str) -> None:
        original = getattr(pipe, method_name)

        @functools.wraps(original)
        def cached(*args, **kwargs):
            if kwargs.get("prompt_embeds") is not None:
                return original(*args, **kwargs)  # the caller brought its own embedding
            key = (method_name, _fingerprint(args), _fingerprint(sorted(kwargs.items())))
            if key in self._entries:
                self.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            self.misses += 1
            result = original(*args, **kwargs)
            self._entries[key] = result
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return result

        setattr(pipe, method_name, cached)

    def install(self, pipe) -> "EncodingMemo":
        self.wrap(pipe, "encode_prompt")
        if hasattr(pipe, "_encode_vae_image"):  # private in diffusers: cache it where it exists
            self.wrap(pipe, "_encode_vae_image")
        return self
