"""Opt-in speed-ups for the Qwen-Image transformer, shared by the Editor, the trainer and
bench/gpu_check.py (so the GPU check measures exactly what the studio runs).

Findings that shaped this module (diffusers 0.42.1):
- No-op text mask: `QwenImageEditPipeline.encode_prompt` already returns `None` for an
  all-ones mask, so the transformer takes SDPA's unmasked (flash) path; the trainer's
  `sample_loss` drops it the same way. Nothing to add; tests/test_speed.py guards it.
- Fused QKV: `fuse_qkv_projections()` exists on the model but is a no-op here (the Qwen
  `Attention` is not an `AttentionModuleMixin`, and `QwenDoubleStreamAttnProcessor2_0`
  calls to_q/to_k/to_v separately), so there is nothing to switch on.
- torch.compile: regional compilation of the 60 identical blocks (diffusers'
  `compile_repeated_blocks`) compiles one block's graph instead of the whole model.
"""
from __future__ import annotations

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def compile_backend(option) -> str | None:
    """`compile=True` means inductor; a string names a torch.compile backend (aot_eager is
    what the CPU tests use: it traces like inductor without generating code)."""
    if option in (None, False, "", "none"):
        return None
    backend = "inductor" if option is True else str(option)
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend {backend!r}: choose one of {', '.join(COMPILE_BACKENDS)}")
    return backend


def compile_transformer(transformer, option=True) -> int:
    """Compile each repeated transformer block in place; returns how many were compiled.
    fullgraph stays off: peft LoRA layers and adapter switching may break graphs, and a
    graph break must cost speed, not an error."""
    backend = compile_backend(option)
    if backend is None:
        return 0
    transformer.compile_repeated_blocks(backend=backend, fullgraph=False, dynamic=None)
    return sum(1 for block in transformer.transformer_blocks if compiled(block))


def compiled(module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None
