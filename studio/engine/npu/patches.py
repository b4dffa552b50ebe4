"""Route a diffusers Qwen-Image transformer through torch_npu's fused operators.

What diffusers 0.42 already has, and is used here as is:
- the `_native_npu` attention backend (`torch_npu.npu_fusion_attention`, BSND layout, the
  boolean mask inverted to torch_npu's "True = masked out" convention);
- an NPU branch in `RMSNorm.forward` (`torch_npu.npu_rms_norm`).
What is missing, and added here:
- diffusers decides both once, when it is first imported, from installed package metadata:
  torch_npu imported later or installed without metadata leaves them off, and the RMSNorm
  branch is process-wide with no way to turn it off per model. So attention is switched per
  model (processor by processor, not `set_attention_backend`, which also changes the
  process-wide default backend for every other diffusers model), and the RMSNorms of this
  model get a fused subclass that always calls `npu_rms_norm`;
- the rotary embedding through `npu_rotary_mul` (off by default: the reference recipe keeps
  the complex multiply, and no speed gain has been measured here).
The recipe (MindSpeed-MM examples/diffsynth/qwen_image_edit/qwen_image_edit_patch.py) swaps
the same three places in DiffSynth's DiT: joint attention, q/k (and txt_norm) RMSNorms, RoPE.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging

import torch
from diffusers.models.normalization import RMSNorm

log = logging.getLogger(__name__)

ATTENTION, RMS_NORM, ROTARY = "attention", "rms_norm", "rotary"


def import_torch_npu():
    """torch_npu, or None when it is not installed or does not load (a broken CANN install
    must not stop the model from running unpatched)."""
    if importlib.util.find_spec("torch_npu") is None:
        return None
    try:
        return importlib.import_module("torch_npu")
    except Exception as exc:  # noqa: BLE001  (ImportError, OSError from missing CANN libs, ...)
        log.warning("torch_npu is installed but does not import (%s): NPU patches not applied", exc)
        return None


def apply_patches(transformer: torch.nn.Module, attention: bool = True, rms_norm: bool = True,
                  rotary: bool = False) -> list[str]:
    """Patch `transformer` (a QwenImageTransformer2DModel) in place; returns what was patched,
    a sublist of ["attention", "rms_norm", "rotary"]. Without torch_npu: changes nothing, [].

    `rotary` is process-wide (diffusers calls a module-level function), the others are per
    model. `remove_patches` undoes all of them."""
    torch_npu = import_torch_npu()
    if torch_npu is None:
        return []
    done = []
    if attention and _route_attention(transformer, torch_npu):
        done.append(ATTENTION)
    if rms_norm and _route_rms_norms(transformer):
        done.append(RMS_NORM)
    if rotary and _route_rotary():
        done.append(ROTARY)
    return done


def remove_patches(transformer: torch.nn.Module) -> list[str]:
    """Undo `apply_patches`; returns what was undone."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    undone = set()
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if getattr(processor, "_attention_backend", None) == AttentionBackendName._NATIVE_NPU:
            processor._attention_backend = None
            undone.add(ATTENTION)
        if isinstance(module, FusedRMSNorm):
            module.__class__ = module._unfused_class
            del module._unfused_class
            undone.add(RMS_NORM)
    if _unroute_rotary():
        undone.add(ROTARY)
    return [name for name in (ATTENTION, RMS_NORM, ROTARY) if name in undone]


# -- attention -------------------------------------------------------------------------
def _route_attention(transformer: torch.nn.Module, torch_npu) -> bool:
    from diffusers.models import attention_dispatch as dispatch

    if dispatch.npu_fusion_attention is not torch_npu.npu_fusion_attention:
        # diffusers bound the operator (or None) at its own import; bind the one that loads now.
        dispatch.npu_fusion_attention = torch_npu.npu_fusion_attention
        dispatch._CAN_USE_NPU_ATTN = True
    routed = 0
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            processor._attention_backend = dispatch.AttentionBackendName._NATIVE_NPU
            routed += 1
    return routed > 0


# -- RMSNorm -----------------------------------------------------------------------------
class FusedRMSNorm(RMSNorm):
    """diffusers' RMSNorm that always runs `torch_npu.npu_rms_norm` (same weights, same
    state_dict keys: only the class of the instance changes)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        import torch_npu

        # As diffusers' own NPU branch: compute in the weight's dtype (the unfused path
        # also returns the weight's dtype).
        hidden_states = hidden_states.to(self.weight.dtype)
        out = torch_npu.npu_rms_norm(hidden_states, self.weight, epsilon=self.eps)[0]
        return out + self.bias if self.bias is not None else out


def _route_rms_norms(transformer: torch.nn.Module) -> bool:
    routed = 0
    for module in transformer.modules():
        # npu_rms_norm needs a gamma: norms without weights keep the PyTorch path.
        if isinstance(module, RMSNorm) and module.weight is not None:
            if not isinstance(module, FusedRMSNorm):
                module._unfused_class = module.__class__
                module.__class__ = FusedRMSNorm
            routed += 1
    return routed > 0


# -- rotary embedding ------------------------------------------------------------------
def _qwen_module():
    from diffusers.models.transformers import transformer_qwenimage

    return transformer_qwenimage


def _fused_rotary(original):
    def apply_rotary_emb_qwen(x, freqs_cis, use_real=True, use_real_unbind_dim=-1):
        if use_real:  # Qwen-Image calls it with use_real=False; anything else stays as it was
            return original(x, freqs_cis, use_real, use_real_unbind_dim)
        import torch_npu

        # x: [B, S, H, D] as pairs (x0, x1); freqs_cis: [S, D/2] complex. The complex product
        # is x * cos + (-x1, x0) * sin with cos/sin repeated per pair: "interleave" mode.
        freqs = freqs_cis[None, :, None, :]
        cos = freqs.real.float().repeat_interleave(2, dim=-1)
        sin = freqs.imag.float().repeat_interleave(2, dim=-1)
        # fp32 like the original (which multiplies in complex64), then back to x's dtype.
        return torch_npu.npu_rotary_mul(x.float(), cos, sin, rotary_mode="interleave").type_as(x)

    apply_rotary_emb_qwen._studio_original = original
    return apply_rotary_emb_qwen


def _route_rotary() -> bool:
    qwen = _qwen_module()
    if not hasattr(qwen.apply_rotary_emb_qwen, "_studio_original"):
        qwen.apply_rotary_emb_qwen = _fused_rotary(qwen.apply_rotary_emb_qwen)
    return True


def _unroute_rotary() -> bool:
    qwen = _qwen_module()
    original = getattr(qwen.apply_rotary_emb_qwen, "_studio_original", None)
    if original is None:
        return False
    qwen.apply_rotary_emb_qwen = original
    return True
