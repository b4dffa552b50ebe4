"""A run survives kills and broken disks around its saves (issue 19, defects 3, 7, 9, 10).

Real trainer runs of the demo model; the fault points of studio/trainer/faults.py land a kill,
or a pause in which the test breaks the output folder, inside an exact window."""
from __future__ import annotations

import os

import pytest
import torch

# -- defect 10: files as readable as any other ------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_lora_and_cache_files_follow_the_umask(demo_model, tmp_path, umask, mode):
    from diffusers import QwenImageTransformer2DModel

    from studio.trainer.cache import EncodedCache
    from studio.trainer.lora_io import add_lora, save_lora

    transformer = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer")
    add_lora(transformer, 4, 4.0, "to_q")
    cache = EncodedCache(tmp_path / "cache", "fp", {})
    previous = os.umask(umask)
    try:
        save_lora(tmp_path / "a.safetensors", transformer, 4, 4.0)
        cache.save("ab" * 32, {"x": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == mode
    assert cache.path("ab" * 32).stat().st_mode & 0o777 == mode
