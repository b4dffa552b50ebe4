"""TEST-ONLY stand-in for torch_npu: its fused operators' signatures, reference math.

Conventions copied from torch_npu's documentation (torch_npu.npu_fusion_attention,
npu_rms_norm, npu_rotary_mul):
- npu_fusion_attention: atten_mask True/1 means MASKED OUT (the opposite of a boolean mask
  in torch's scaled_dot_product_attention); bool or uint8 only; shapes broadcastable to
  [B, N, Sq, Skv]. Softmax(Mask(scale * (pse + Q K^T))) V; returns a tuple whose first
  element is the output in the input layout.
- npu_rms_norm(x, gamma, epsilon) -> (y, rstd), normalised over gamma's dimensions.
- npu_rotary_mul(x, r1, r2, rotary_mode) -> x * r1 + rotate(x) * r2.
"""
from __future__ import annotations

import collections
import types

import torch

__version__ = "0.0+test-stand-in"
calls: collections.Counter = collections.Counter()

# torch_npu registers torch.npu; there is no NPU here.
npu = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
torch.npu = npu

_LAYOUTS = ("BSH", "SBH", "BSND", "BNSD")


def _to_bnsd(t: torch.Tensor, layout: str, heads: int) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)
    return t.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3)  # SBH: [S, B, N, D] -> [B, N, S, D]


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        return t.transpose(1, 2).flatten(2)
    return t.permute(2, 0, 1, 3).flatten(2)  # SBH


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None,
                         padding_mask=None, atten_mask=None, scale=1.0, keep_prob=1.0,
                         pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
                         prefix=None,
                         actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                         gen_mask_parallel=True, sync=False):
    calls["npu_fusion_attention"] += 1
    if input_layout not in _LAYOUTS:
        raise NotImplementedError(f"stand-in: input_layout {input_layout!r} (TND not modelled)")
    if sparse_mode != 0 or prefix is not None or actual_seq_qlen is not None \
            or padding_mask is not None:
        raise NotImplementedError("stand-in: only sparse_mode=0 without prefix/varlen/padding_mask")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError("query, key and value must have one dtype")
    if atten_mask is not None and atten_mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError("atten_mask must be bool or uint8 (True = masked out), "
                        f"got {atten_mask.dtype}")
    q, k, v = (_to_bnsd(t, input_layout, head_num) for t in (query, key, value))
    if q.shape[1] != head_num:
        raise ValueError(f"head_num {head_num} does not match the query's {q.shape[1]} heads")
    scores = q.float() @ k.float().transpose(-1, -2)
    if pse is not None:
        scores = scores + pse.float()
    scores = scores * scale
    sq, skv = scores.shape[-2:]
    i = torch.arange(sq, device=scores.device)[:, None]
    j = torch.arange(skv, device=scores.device)[None, :]
    masked = (i - j > pre_tockens) | (j - i > next_tockens)  # the sparse band, sparse_mode 0
    if atten_mask is not None:
        masked = masked | atten_mask.bool()
    probs = torch.softmax(scores.masked_fill(masked, float("-inf")), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row with every key masked: zeros (not NaN)
    if keep_prob < 1.0:
        probs = torch.nn.functional.dropout(probs, p=1.0 - keep_prob)
    out = _from_bnsd((probs @ v.float()).to(query.dtype), input_layout)
    # softmax_max and softmax_sum as torch_npu returns them for its backward: [B, N, Sq, 8].
    row_max = scores.masked_fill(masked, float("-inf")).amax(-1, keepdim=True)
    row_sum = torch.exp(scores - row_max).masked_fill(masked, 0).sum(-1, keepdim=True)
    stats_shape = (*scores.shape[:-1], 8)
    return out, row_max.expand(stats_shape), row_sum.expand(stats_shape), torch.empty(0), 0, 0, 0


def npu_rms_norm(x, gamma, epsilon=1e-6):
    calls["npu_rms_norm"] += 1
    dims = tuple(range(-gamma.dim(), 0))
    rstd = torch.rsqrt(x.float().pow(2).mean(dims, keepdim=True) + epsilon)
    return (x.float() * rstd * gamma.float()).to(x.dtype), rstd


def npu_rotary_mul(input, r1, r2, rotary_mode="half"):
    calls["npu_rotary_mul"] += 1
    if rotary_mode == "half":
        x1, x2 = input.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
    elif rotary_mode == "interleave":
        pairs = input.unflatten(-1, (-1, 2))
        rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    else:
        raise ValueError(f"rotary_mode must be 'half' or 'interleave', not {rotary_mode!r}")
    return input * r1 + rotated * r2
