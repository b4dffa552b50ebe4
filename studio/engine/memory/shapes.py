"""A weightless stand-in for the real Qwen-Image-Edit folder: its configs, and safetensors
headers with every tensor's name, shape and dtype (no data). The plan reads only headers, so
the card presets can be planned, and checked in tests, where the 57 GB of weights are absent.
The shapes come from the real classes built on the meta device with the published configs.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

# Qwen2.5-VL-7B-Instruct (the text encoder of every Qwen-Image-Edit release).
TEXT_ENCODER = {
    "model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "tie_word_embeddings": False,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31]},
}


def _write_header(module, file: Path) -> None:
    header, offset = {}, 0
    for name, tensor in module.state_dict().items():
        size = tensor.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(struct.pack("<Q", len(raw)) + raw)


def shapes_folder(folder: Path, pipeline: str = "QwenImageEditPlusPipeline") -> Path:
    """Write (once) the stand-in folder; Edit and Edit-2509/2511 share every shape."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = dict(TEXT_ENCODER)
    config["text_config"] = {k: v for k, v in config.items()
                             if k not in ("vision_config", "architectures", "model_type")}
    with init_empty_weights():
        parts = {"transformer": QwenImageTransformer2DModel(),
                 "vae": AutoencoderKLQwenImage(),
                 "text_encoder": Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))}
    for name, module in parts.items():
        weights = "model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors"
        _write_header(module, folder / name / weights)
        cfg = TEXT_ENCODER if name == "text_encoder" else dict(module.config)
        (folder / name / "config.json").write_text(json.dumps(cfg, default=list))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return folder
