"""The Train tab's and `studio train`'s starting points; every field stays editable.

The card presets are the fastest savers that the memory plan says fit each card at the seed's
setting (512x512 targets, max_pixels 262144, with 1 MP edit images), checked by
tests/test_memory_presets.py.
"""
from __future__ import annotations

from .launch import TrainOptions

DEMO = "Demo on CPU"
RECIPE = "Reference recipe: 8 Ascend NPUs, ZeRO-2"  # the reference recipe (MindSpeed-MM)

_GPU_RUN = dict(device="cuda", mode="single", processes_per_node=1, max_steps=2000,
                save_steps=250, lora_rank=32, max_pixels=262144, mixed_precision="bf16",
                use_gradient_checkpointing=True)
TRAIN_PRESETS: dict[str, dict] = {
    # Edit images at the targets' size: the random demo model learns nothing from 1 MP ones,
    # and encoding them takes seconds per pair on a CPU.
    DEMO: dict(device="cpu", mode="single", processes_per_node=1, max_steps=20, save_steps=10,
               lora_rank=4, max_pixels=64 * 64, mixed_precision="no",
               use_gradient_checkpointing=False, edit_image_auto_resize=False),
    "One 24 GB GPU": dict(_GPU_RUN, fp8_base=True, offload_blocks=20),
    "One 32 GB GPU": dict(_GPU_RUN, fp8_base=True),
    "One 48 GB GPU": dict(_GPU_RUN, fp8_base=True),
    "One 80 GB GPU": dict(_GPU_RUN),
    "One Ascend 910B (64 GB)": dict(_GPU_RUN, device="npu"),
    # 8 Ascend cards, DeepSpeed ZeRO-2, bf16, 262144 pixels.
    RECIPE: dict(device="npu", mode="zero2", processes_per_node=8, max_steps=None, num_epochs=1,
                 save_steps=500, lora_rank=32, max_pixels=262144, mixed_precision="bf16",
                 use_gradient_checkpointing=True),
}
# The card each preset is sized for, in GB (its memory before the driver takes its share).
PRESET_CARD_GB = {"One 24 GB GPU": 24, "One 32 GB GPU": 32, "One 48 GB GPU": 48,
                  "One 80 GB GPU": 80, "One Ascend 910B (64 GB)": 64, RECIPE: 64}


def preset_options(name: str, **changes) -> TrainOptions:
    """A preset's options (the rest at their defaults), with `changes` on top."""
    return TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS[name], **changes})
