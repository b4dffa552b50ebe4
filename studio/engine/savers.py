"""Memory savers, shared by training and editing, and the one rule of which ones combine.

- fp8 storage of the frozen transformer: diffusers' layerwise casting (weights stored in
  float8_e4m3fn, each layer cast to the compute dtype for its forward).
- an int8 base: torchao's int8 weight-only quantization through diffusers' TorchAoConfig.
  Chosen over bitsandbytes because it runs on CPU and CUDA alike (diffusers' bitsandbytes
  quantizer refuses to load without a GPU) and peft trains LoRA over it (TorchaoLoraLinear).
- block offload: the first N transformer blocks wait in host memory; diffusers' group
  offloading moves each of their layers onto the device just before use, the next one
  prefetched on a side stream. Leaf level, so that LoRA layers added later stay on the device
  (group offloading restores its own host copies, which would undo training updates).
- text-encoder offload (group offloading of every layer) and fp8 text-encoder storage.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

FP8 = torch.float8_e4m3fn
QUANTIZE_CHOICES = ("none", "int8")


@dataclass(frozen=True)
class Savers:
    fp8_base: bool = False
    quantize_base: str = "none"      # none or int8
    offload_blocks: int = 0          # transformer blocks kept in host memory
    text_encoder_offload: bool = False
    fp8_text_encoder: bool = False

    @property
    def quantized(self) -> bool:
        return self.quantize_base != "none"

    @classmethod
    def of(cls, source) -> "Savers":
        """The savers named on any object with these attributes (trainer args, TrainOptions)."""
        return cls(**{k: getattr(source, k, v) for k, v in asdict(cls()).items()})

    def describe(self) -> str:
        parts = (["fp8 base"] if self.fp8_base else []) + \
            ([f"{self.quantize_base} base"] if self.quantized else []) + \
            ([f"{self.offload_blocks} blocks offloaded"] if self.offload_blocks else []) + \
            (["text encoder offloaded"] if self.text_encoder_offload else []) + \
            (["fp8 text encoder"] if self.fp8_text_encoder else [])
        return ", ".join(parts) or "no memory savers"


# One help text per saver, for the trainer, `studio train`, `studio edit`/`compare` and app.py.
HELP = {
    "fp8_base": "store the frozen transformer in fp8, compute in bf16 (or the edit's --dtype): "
                "about half its weight memory; each layer pays a cast, pixels change slightly",
    "quantize_base": "int8: the frozen transformer quantized by torchao, QLoRA-style (about half "
                     "the bf16 weight memory; needs bf16 and the [quant] extra; slower)",
    "offload_blocks": "keep the first N transformer blocks in host memory, each layer coming onto "
                      "the device just before use (about 0.7 GB a block in bf16 on the real "
                      "model; each step pays the transfers; training needs gradient checkpointing)",
    "text_encoder_offload": "keep the text encoder's layers in host memory, each brought on for "
                            "its forward: about 16 GB less on the device; encoding is slower",
    "fp8_text_encoder": "store the text encoder in fp8 (its encodings change slightly, so they "
                        "are cached apart)",
}
CPU_OFFLOAD_HELP = ("edits: keep each whole component (text encoder, transformer, VAE) on the CPU "
                    "until it runs: the device holds one at a time; each edit pays moving them "
                    "(not with --offload-blocks/--text-encoder-offload)")


def saver_help(name: str) -> str:
    return HELP[name]


def add_flags(parser) -> None:
    """The savers as an editor's flags (studio edit, edit-batch, compare, app.py), kebab-case;
    `Savers.of(args)` reads them back, and `args.cpu_offload` is diffusers' model offload."""
    parser.add_argument("--cpu-offload", action="store_true", help=CPU_OFFLOAD_HELP)
    for name, default in asdict(Savers()).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=HELP[name])
        elif name == "quantize_base":
            parser.add_argument(flag, default=default, choices=QUANTIZE_CHOICES, help=HELP[name])
        else:
            parser.add_argument(flag, type=type(default), default=default, metavar="N",
                                help=HELP[name])


def problems(savers: Savers, *, device: str, num_blocks: int | None = None, training: bool,
             gradient_checkpointing: bool = True, mode: str = "single",
             dtype: torch.dtype | None = None, model_cpu_offload: bool = False) -> list[str]:
    """Why this combination cannot work (empty when it can). `model_cpu_offload`: the editor's
    --cpu-offload (diffusers' enable_model_cpu_offload)."""
    out = []
    kind = device.split(":")[0]
    if savers.quantize_base not in QUANTIZE_CHOICES:
        out.append(f"unknown base quantization {savers.quantize_base!r}; choose int8 or none")
    if savers.fp8_base and savers.quantized:
        out.append("fp8 storage and an int8 base both decide how the frozen weights are stored; "
                   "choose one")
    if savers.quantized and kind == "npu":
        out.append("the int8 base (torchao) has kernels for CUDA and CPU, not for Ascend NPUs; "
                   "use fp8 storage or block offload there")
    if savers.quantized and dtype is not None and dtype != torch.bfloat16:
        out.append("the int8 base (torchao) computes in bf16; set the precision to bf16 "
                   "(--mixed_precision bf16 to train, --dtype bf16 to edit)")
    if savers.offload_blocks < 0:
        out.append("the number of offloaded blocks cannot be negative")
    elif num_blocks is not None and savers.offload_blocks > num_blocks:
        out.append(f"the model has {num_blocks} transformer blocks; cannot offload "
                   f"{savers.offload_blocks}")
    base_savers = savers.fp8_base or savers.quantized or savers.offload_blocks
    if training and base_savers and not gradient_checkpointing:
        out.append("fp8 storage, the int8 base and block offload need gradient checkpointing "
                   "when training: without it, backward keeps a full copy of every layer's "
                   "weights on the device until the step ends, which saves nothing")
    if model_cpu_offload and (savers.offload_blocks or savers.text_encoder_offload):
        out.append("--cpu-offload moves whole components on and off the device, which diffusers "
                   "refuses on group-offloaded ones (block and text-encoder offload); choose "
                   "--cpu-offload or --offload-blocks/--text-encoder-offload")
    if training and mode == "zero2" and base_savers:
        out.append("DeepSpeed ZeRO-2 casts the whole model to bf16 and moves it onto the card, "
                   "which undoes fp8 storage, the int8 base and block offload; use mode ddp "
                   "with these savers")
    return out


def check(savers: Savers, **context) -> None:
    found = problems(savers, **context)
    if found:
        raise ValueError("; ".join(found))


def skip_patterns(model) -> tuple[str, ...]:
    """The layers that layerwise casting leaves in the compute dtype: diffusers' defaults and the
    model's own (norms, position embeddings), as `enable_layerwise_casting` picks them."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    own = tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ())
    return tuple(dict.fromkeys(DEFAULT_SKIP_MODULES_PATTERN + own))


def store_fp8(module, compute_dtype: torch.dtype, patterns: tuple[str, ...]) -> None:
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(module, storage_dtype=FP8, compute_dtype=compute_dtype,
                            skip_modules_pattern=patterns)


def offload(module, device) -> None:
    """Keep `module`'s layers in host memory; each comes onto `device` for its forward, the next
    one prefetched on a side stream where the device has streams."""
    from diffusers.hooks import apply_group_offloading

    device = torch.device(device)
    streams = device.type in ("cuda", "npu")
    apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="leaf_level", use_stream=streams,
                           low_cpu_mem_usage=not streams)


def quantization_config(savers: Savers):
    if savers.quantize_base != "int8":
        return None
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as exc:
        raise ValueError("the int8 base needs torchao: pip install 'qwen-image-edit-studio[quant]' "
                         "(or pip install torchao)") from exc
    from diffusers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def apply_text_encoder_savers(text_encoder, device, dtype: torch.dtype, savers: Savers) -> bool:
    """fp8 storage and/or offload of the text encoder (on CPU it only takes fp8 storage).
    Returns whether it was placed on the device (False: the caller moves it there)."""
    if savers.fp8_text_encoder:
        store_fp8(text_encoder, dtype, skip_patterns(text_encoder))
    if savers.text_encoder_offload and torch.device(device).type != "cpu":
        offload(text_encoder, device)
        return True
    return False


def gradient_checkpointing(requested: bool | None, device: str) -> bool:
    """On by default on accelerators (the reference recipe's setting: a 1 MP pair does not fit
    without it), off on CPU, where it only costs time."""
    return requested if requested is not None else device.split(":")[0] != "cpu"
