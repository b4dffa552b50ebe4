"""Speed options (studio/engine/speed.py): no text mask reaches the transformer, and the
opt-in torch.compile gives the eager results in the Editor and the trainer. The CPU tests
compile with the aot_eager backend: dynamo traces the blocks as for inductor, without the
C++ code generation that would take minutes on two cores."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio.engine.editor import Editor
from studio.engine.speed import compiled
from tests.trainer_helpers import make_dataset, run_trainer

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

EDIT = dict(steps=2, size=(64, 64), true_cfg_scale=4.0, seed=5)
IMAGE = Image.new("RGB", (96, 80), (40, 150, 90))


def test_no_text_mask_reaches_the_transformer_with_cfg(demo_editor):
    # An all-ones mask would force SDPA's slow masked path on every call.
    seen = []
    hook = demo_editor.pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("encoder_hidden_states_mask")),
        with_kwargs=True)
    try:
        demo_editor.encoding_memo.clear()
        demo_editor.edit(IMAGE, "turn the grass red", **EDIT)
    finally:
        hook.remove()
    assert len(seen) == 2 * EDIT["steps"]  # cond and uncond per step
    assert all(mask is None for mask in seen)


def test_compiled_editor_matches_eager(demo_model, demo_editor):
    editor = Editor(demo_model, device="cpu", compile="aot_eager")
    got = np.asarray(editor.edit(IMAGE, "turn the grass red", **EDIT).image, dtype=np.int16)
    blocks = editor.pipeline.transformer.transformer_blocks
    assert all(compiled(block) for block in blocks)
    want = np.asarray(demo_editor.edit(IMAGE, "turn the grass red", **EDIT).image, dtype=np.int16)
    assert np.abs(got - want).max() <= 1  # fp32 on CPU: at most one 8-bit level apart


def test_unknown_compile_backend_fails_at_construction(demo_model):
    with pytest.raises(ValueError, match="compile backend 'fast'"):
        Editor(demo_model, device="cpu", compile="fast")


def test_trainer_compile_flag_gives_the_eager_losses(demo_model, tmp_path):
    data = make_dataset(tmp_path / "ds", n=2)
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--compile_transformer", "aot_eager"])):
        out = tmp_path / name
        proc = run_trainer(demo_model, data, out, "--max_steps", 3, *extra)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [row["loss"] for row in rows]
        if extra:
            assert "torch.compile (aot_eager)" in proc.stderr + proc.stdout
    assert len(losses["compiled"]) == 3
    assert np.allclose(losses["compiled"], losses["eager"], rtol=1e-4, atol=1e-6)


def test_diffusers_fused_qkv_is_still_a_no_op_for_qwen(demo_model):
    # speed.py documents that fuse_qkv_projections does nothing for this transformer (its
    # processor calls to_q/to_k/to_v separately). If a diffusers upgrade makes it fuse,
    # this fails: then offer it as an option (inference only: LoRA targets to_q/k/v).
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer")
    transformer.fuse_qkv_projections()
    attn = transformer.transformer_blocks[0].attn
    assert not hasattr(attn, "to_qkv") and not getattr(attn, "fused_projections", False)
