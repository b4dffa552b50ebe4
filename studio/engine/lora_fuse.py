"""A LoRA fused into the base transformer at a strength, saved as a model folder for serving.

diffusers loads the LoRA into the transformer (peft layers), `fuse_lora` merges
W += strength · B A, `unload_lora` drops the peft layers, and `save_pretrained` writes the
transformer (sharded, with its index). The other components are hard links to the base
model's files (copies across filesystems), so the folder costs the transformer's size only.
The folder is built under a dot-name and renamed into place: a failure leaves nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..dataset.export import link_or_copy
from ..paths import file_mode
from .lora_files import base_mismatches, keyed, load_lora
from .model_folder import inspect_model_folder
from .memory.weights import tensors

FUSED_RECORD = "studio_fused.json"  # where the folder came from
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _stored_dtype(transformer_dir: Path) -> torch.dtype:
    """The dtype the base transformer is saved in; the fused one is saved the same."""
    from safetensors import safe_open

    with safe_open(str(sorted(transformer_dir.glob("*.safetensors"))[0]), "pt") as f:
        return _DTYPES.get(f.get_slice(next(iter(f.keys()))).get_dtype(), torch.float32)


def fuse(model_dir: str | Path, lora_path: str | Path, out_dir: str | Path, strength: float = 1.0,
         overwrite: bool = False) -> Path:
    """Write `out_dir`: the model with the LoRA fused in. Checks everything before writing."""
    from diffusers import QwenImageTransformer2DModel

    info = inspect_model_folder(model_dir)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not (overwrite and (out / FUSED_RECORD).is_file()):
        raise ValueError(f"{out} already exists; choose a new folder"
                         + (" (or overwrite)" if (out / FUSED_RECORD).is_file() else ""))
    if out == info.path:
        raise ValueError("the fused model must go to a new folder, not over its base model")
    lora = load_lora(lora_path)
    missing = base_mismatches(lora, info.path)
    if missing:
        raise ValueError(f"{lora.path.name}: {len(missing)} module(s) are not in the base model "
                         f"(e.g. {missing[0]}); nothing fused")
    transformer = QwenImageTransformer2DModel.from_pretrained(
        info.path / "transformer", torch_dtype=_stored_dtype(info.path / "transformer"))
    transformer.load_lora_adapter(keyed(lora.weights, "diffusers"), prefix="transformer",
                                  adapter_name="fused")
    transformer.fuse_lora(lora_scale=float(strength))
    transformer.unload_lora()
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        transformer.save_pretrained(partial / "transformer")
        for file in (partial / "transformer").iterdir():  # saved 0600; an ordinary file's mode
            file.chmod(file_mode())
        for item in sorted(info.path.iterdir()):
            if item.name == "transformer":
                continue
            if item.is_dir():
                for file in sorted(p for p in item.rglob("*") if p.is_file()):
                    target = partial / file.relative_to(info.path)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    link_or_copy(str(file), str(target), link=True)
            elif item.is_file():
                shutil.copyfile(item, partial / item.name)
        (partial / FUSED_RECORD).write_text(json.dumps(
            {"base_model": str(info.path), "lora": str(lora.path), "strength": float(strength)},
            indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    tensors.cache_clear()  # the weights cache is keyed by folder; this one is new
    return out
