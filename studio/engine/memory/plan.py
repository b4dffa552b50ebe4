"""The memory plan: peak memory per device and host RAM per node, before anything loads.

Weights come from the model folder's safetensors headers (exact sizes per component and the
savers' storage), activations from the training size through the transformer's config:
- each block saves about ACTIVATION_VALUES values per token per hidden unit for backward,
  plus the LoRA layers' own saved inputs (counted from the targets' shapes);
- gradient checkpointing keeps only each block's input, and recomputes one block at a time;
- ZeRO-2 shards the LoRA's gradients and optimizer states over the processes.
The constants were measured on this architecture with torch's saved-tensor hooks (see
docs/design.md); the plan's error on the demo model is bench/memory_plan_error.py's figure.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..lora_targets import DEFAULT_TARGETS
from ..savers import Savers, skip_patterns
from .weights import Tensor, linear_modules, stored_bytes, tensors

GB = 2**30
ACTIVATION_VALUES = 22      # saved values per token per hidden unit, one block (bf16 or fp32)
BACKWARD_VALUES = 8         # one block's activation gradients in flight, same units
OUTSIDE_VALUES = 6          # embeddings in, final norm/projection out, the loss
LORA_STATE_BYTES = 16       # fp32 weight, gradient and AdamW's two moments per LoRA value
HOST_BASE_GB = 1.5          # a trainer process's own host memory (python, torch, libraries)
VAE_VALUES = 6              # live values per pixel per base channel while the VAE encodes/decodes
TEXT_VALUES = 12            # live values per token per hidden unit in a text-encoder layer
PROMPT_TOKENS = 64          # the instruction and the template after the dropped system prompt
ROPE_POSITIONS = 4096       # QwenEmbedRope's precomputed positions, each sign
STREAMED_LAYERS = 2         # offloaded layers on the device at once: the running one and the next


@dataclass(frozen=True)
class TrainSetting:
    max_pixels: int = 1024 * 1024
    fixed_size: tuple[int, int] | None = None  # (width, height)
    edit_auto_resize: bool = True
    edit_images: int = 1
    lora_rank: int = 32
    lora_targets: str = ""                     # "" = the trainer's default targets
    savers: Savers = Savers()
    gradient_checkpointing: bool = True
    mode: str = "single"                       # single | ddp | zero2
    processes_per_node: int = 1
    num_machines: int = 1
    device: str = "cuda"                       # cpu | cuda | npu
    dtype_bytes: int = 2                       # bf16; 4 for fp32

    @classmethod
    def of(cls, source, **given) -> "TrainSetting":
        """From trainer args or TrainOptions (same field names); `given` names the rest
        (device, mode, processes_per_node, num_machines, dtype_bytes)."""
        from ..savers import gradient_checkpointing

        fixed = (source.width, source.height) if getattr(source, "width", None) else None
        device = given.get("device", getattr(source, "device", None) or "cuda")
        return cls(max_pixels=source.max_pixels, fixed_size=fixed,
                   edit_auto_resize=getattr(source, "edit_image_auto_resize", True),
                   lora_rank=source.lora_rank, lora_targets=source.lora_target_modules,
                   savers=Savers.of(source),
                   gradient_checkpointing=gradient_checkpointing(
                       source.use_gradient_checkpointing, device),
                   **{"device": device, **given})


@dataclass
class Plan:
    device_gb: float                 # peak per device (on CPU: per process, in host RAM)
    host_gb: float                   # peak host RAM per node
    phase: str                       # which phase peaks: encoding | training | editing
    parts: dict[str, float] = field(default_factory=dict)  # GB of each item at the peak

    def lines(self) -> list[str]:
        where = "per process (host RAM)" if self.host_only else "per device"
        head = f"memory plan: {size(self.device_gb)} {where} at the {self.phase} peak, " \
               f"{size(self.host_gb)} host RAM per node"
        return [head] + [f"  {name}: {size(gb)}" for name, gb in self.parts.items() if gb]

    host_only: bool = False


def size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1024:.1f} MB"


def _config(model: Path, component: str) -> dict:
    return json.loads((model / component / "config.json").read_text())


def _pipeline(model: Path) -> str:
    return json.loads((model / "model_index.json").read_text()).get("_class_name", "")


def _area(max_pixels: int, fixed: tuple[int, int] | None) -> int:
    """Pixels of a training target: the fixed size, else the max_pixels cap (the plan assumes
    images at least that big)."""
    return fixed[0] * fixed[1] if fixed else max_pixels


def _vision_tokens(model: Path, area: int) -> int:
    vision = _config(model, "text_encoder").get("vision_config", {})
    side = vision.get("patch_size", 14) * vision.get("spatial_merge_size", 2)
    return max(1, area // (side * side))


def sequence(model: Path, target_area: int, edit_area: int, edit_images: int) -> dict[str, int]:
    """Token counts: target and edit-image latents (16 pixels a side per token), and the
    text-encoder output (the instruction plus the VL encoder's image tokens)."""
    plus = _pipeline(model) == "QwenImageEditPlusPipeline"
    vl_area = 384 * 384 if plus else edit_area  # the Plus pipeline's CONDITION_IMAGE_SIZE
    return {"target": target_area // 256, "edit": edit_images * (edit_area // 256),
            "text": PROMPT_TOKENS + edit_images * _vision_tokens(model, vl_area)}


def _rope_tables(model: Path) -> int:
    """Bytes of the transformer's RoPE tables (QwenEmbedRope: complex64, 4096 positions each
    way, half of each axis' dims): plain attributes, not weights. 4 MB on the real model, but
    more than the demo transformer's weights."""
    return 2 * ROPE_POSITIONS * sum(_config(model, "transformer")["axes_dims_rope"]) // 2 * 8


def _transformer_dims(model: Path) -> tuple[int, int]:
    cfg = _config(model, "transformer")
    return cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["num_layers"]


def _skips(component: str) -> tuple[str, ...]:
    """The layers fp8 storage leaves alone, as savers.store_fp8 applies it."""
    if component != "transformer":
        return skip_patterns(None)
    from diffusers import QwenImageTransformer2DModel

    return skip_patterns(QwenImageTransformer2DModel)


def _base_bytes(items, savers: Savers, dtype_bytes: int) -> int:
    if savers.fp8_base:
        return stored_bytes(items, dtype_bytes, 1, _skips("transformer"))
    if savers.quantized:
        return stored_bytes(items, dtype_bytes, 1)
    return stored_bytes(items, dtype_bytes)


def _largest_layer(items, dtype_bytes: int) -> float:
    """GB of the biggest Linear layer: what streaming one layer at a time holds."""
    return max(stored_bytes([t for t in items if t.module == m], dtype_bytes)
               for m in linear_modules(tuple(items))) / GB


def _lora(items: tuple[Tensor, ...], targets: str, rank: int,
          input_copies: bool) -> tuple[int, dict[str, int]]:
    """LoRA values in total, and per stream the fp32 width its saved tensors add per token:
    A's output (rank), and A's input when peft casts it to fp32 (`input_copies`: a bf16 base;
    on an fp32 base the cast is a no-op and A saves the tensor the base layer saved)."""
    names = [n for n in (targets or DEFAULT_TARGETS).split(",") if n]
    shapes = {t.module: t.shape for t in items if t.name.endswith(".weight") and len(t.shape) == 2}
    values, width = 0, {"img": 0, "txt": 0}
    for module, (out_f, in_f) in shapes.items():
        if not any(module == n or module.endswith("." + n) for n in names):
            continue
        values += rank * (in_f + out_f)
        if re.match(r"^transformer_blocks\.0\.", module):
            stream = "txt" if re.search(r"\.(txt_|add_|to_add_out)", module) else "img"
            if "_mod." not in module:  # modulation sees one value per sample, not per token
                width[stream] += (in_f if input_copies else 0) + rank
    return values, width


def train_plan(model: str | Path, s: TrainSetting) -> Plan:
    model = Path(model)
    b, world = s.dtype_bytes, s.processes_per_node * s.num_machines
    edit_area = 1024 * 1024 if s.edit_auto_resize else _area(s.max_pixels, None)
    seq = sequence(model, _area(s.max_pixels, s.fixed_size), edit_area, s.edit_images)
    d, layers = _transformer_dims(model)
    items = tensors(model / "transformer")
    per_block = [t for t in items if t.block == 0]
    block_gb = stored_bytes(per_block, b) / GB
    offloaded = min(s.savers.offload_blocks, layers)
    base = _base_bytes(items, s.savers, b) / GB
    stored_block = _base_bytes(per_block, s.savers, b) / GB
    parts = {"transformer weights": base - offloaded * stored_block}
    if offloaded:  # streamed layers, and the recomputed block that backward holds
        parts["offload window"] = STREAMED_LAYERS * _largest_layer(per_block, b) + stored_block
    if s.savers.fp8_base or s.savers.quantized:  # the recomputed block's compute-dtype copies
        parts["cast copies of one block"] = block_gb
    lora_values, lora_width = _lora(items, s.lora_targets, s.lora_rank, input_copies=b != 4)
    state = LORA_STATE_BYTES if s.mode != "zero2" else 2 + (LORA_STATE_BYTES - 2) / world
    parts["LoRA, gradients, optimizer"] = lora_values * state / GB
    tokens = {"img": seq["target"] + seq["edit"], "txt": seq["text"]}
    n = tokens["img"] + tokens["txt"]
    lora_block = sum(tokens[k] * lora_width[k] for k in tokens) * 4  # fp32
    full_block = n * d * ACTIVATION_VALUES * b + lora_block
    if s.gradient_checkpointing:
        acts = layers * n * d * b + full_block
    else:
        acts = layers * full_block
    parts["activations"] = (acts + n * d * (BACKWARD_VALUES + OUTSIDE_VALUES) * b
                            + _rope_tables(model)) / GB
    training = sum(parts.values())
    encoding, encode_parts = _encoding_peak(model, s, edit_area)
    phase, peak, shown = ("training", training, parts) if training >= encoding else \
        ("encoding", encoding, encode_parts)
    host_only = s.device == "cpu"
    per_process_host = HOST_BASE_GB + offloaded * stored_block + block_gb  # + the loading buffer
    if s.savers.text_encoder_offload and not host_only:
        per_process_host = max(per_process_host, HOST_BASE_GB + encode_parts["text encoder (host)"])
    host = s.processes_per_node * (per_process_host + (peak if host_only else 0))
    return Plan(round(peak, 4), round(host, 2), phase, {k: round(v, 5) for k, v in shown.items()},
                host_only=host_only)


def _encoding_peak(model: Path, s: TrainSetting, edit_area: int) -> tuple[float, dict]:
    """The text encoder and the VAE, before the transformer loads."""
    b = s.dtype_bytes
    te = tensors(model / "text_encoder")
    te_gb = (stored_bytes(te, b, 1, _skips("text_encoder")) if s.savers.fp8_text_encoder
             else stored_bytes(te, b)) / GB
    parts = {}
    if s.savers.text_encoder_offload and s.device != "cpu":
        parts["text encoder (streamed)"] = STREAMED_LAYERS * _largest_layer(te, b)
        parts["text encoder (host)"] = te_gb
    else:
        parts["text encoder"] = te_gb
    parts["VAE"] = stored_bytes(tensors(model / "vae"), b) / GB
    cfg = _config(model, "text_encoder")
    hidden = cfg.get("hidden_size") or cfg.get("text_config", {}).get("hidden_size", 3584)
    text = sequence(model, 0, edit_area, s.edit_images)["text"]
    base_dim = _config(model, "vae").get("base_dim", 96)
    parts["encoding activations"] = max(text * hidden * TEXT_VALUES * b,
                                        edit_area * base_dim * VAE_VALUES * b) / GB
    device = sum(v for k, v in parts.items() if k != "text encoder (host)")
    return device, parts


@dataclass(frozen=True)
class EditSetting:
    width: int = 1024
    height: int = 1024
    edit_images: int = 1
    savers: Savers = Savers()
    cpu_offload: bool = False      # diffusers' model offload: one component on the device at a time
    device: str = "cuda"
    dtype_bytes: int = 2


INFERENCE_VALUES = 10  # live values per token per hidden unit in one block without autograd


def edit_plan(model: str | Path, s: EditSetting) -> Plan:
    """One edit: every component resident (or one at a time with cpu_offload), a denoising
    step's activations, and the VAE decoding the output."""
    model, b = Path(model), s.dtype_bytes
    d, layers = _transformer_dims(model)
    items = tensors(model / "transformer")
    per_block = [t for t in items if t.block == 0]
    offloaded = min(s.savers.offload_blocks, layers)
    stored_block = _base_bytes(per_block, s.savers, b) / GB
    transformer = _base_bytes(items, s.savers, b) / GB - offloaded * stored_block
    if offloaded:
        transformer += STREAMED_LAYERS * _largest_layer(per_block, b)
    train_like = TrainSetting(savers=s.savers, device=s.device, dtype_bytes=b, edit_images=s.edit_images)
    _, encode = _encoding_peak(model, train_like, 1024 * 1024)
    text_encoder = sum(v for k, v in encode.items() if k.startswith("text encoder") and "host" not in k)
    vae = encode["VAE"]
    seq = sequence(model, s.width * s.height, 1024 * 1024, s.edit_images)
    n = seq["target"] + seq["edit"] + seq["text"]
    parts = {"transformer weights": transformer, "text encoder": text_encoder, "VAE": vae,
             "activations": n * d * INFERENCE_VALUES * b / GB,
             "VAE decoding": s.width * s.height * _config(model, "vae").get("base_dim", 96)
             * VAE_VALUES * 2 * b / GB}
    if s.cpu_offload:  # model offload keeps only the running component on the device
        parts["text encoder"] = parts["VAE"] = 0.0
        parts["largest other component"] = max(text_encoder, vae)
    peak = sum(parts.values())
    host_only = s.device == "cpu"
    host = HOST_BASE_GB + offloaded * stored_block + (peak if host_only else 0) + \
        (text_encoder + vae if s.cpu_offload else 0)
    return Plan(round(peak, 4), round(host, 2), "editing", {k: round(v, 5) for k, v in parts.items()},
                host_only=host_only)
