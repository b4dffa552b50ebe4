"""bench/gpu_check.py's pieces on CPU: the FLOP count behind its MFU figures, and that its
batched-CFG case (padded, masked negative prompt) computes what two separate calls do."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SPEC = importlib.util.spec_from_file_location(
    "gpu_check", Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)

IMAGE_STREAM = (".attn.to_q.", ".attn.to_k.", ".attn.to_v.", ".attn.to_out.0.", ".img_mlp.")


def test_flops_of_the_real_size_model_follow_the_formula():
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):  # real size, no memory
        model = QwenImageTransformer2DModel()
    params = sum(p.numel() for p in model.parameters())
    assert 19.5e9 < params < 21e9  # docs/design.md: ~20B
    # Per image token: the image stream's matrices, counted here from parameter names.
    img = sum(p.numel() for n, p in model.named_parameters()
              if n.endswith(".weight") and p.dim() == 2 and any(s in n for s in IMAGE_STREAM))
    img += model.img_in.weight.numel() + model.proj_out.weight.numel()
    n, layers, width = 4096, 60, 24 * 128
    # Linear FLOPs grow by 2 x img per extra image token; the rest is attention (4 L S^2 d).
    got = gpu_check.forward_flops(model, n + 1, 0) - gpu_check.forward_flops(model, n, 0)
    assert got == 2 * img + 4 * layers * ((n + 1) ** 2 - n ** 2) * width
    assert 6.5e9 < img < 7.1e9  # a third of the parameters touch each token


def test_batched_cfg_matches_two_separate_calls():
    model, _ = gpu_check.build_transformer(layers=1, heads=2, device="cpu", dtype=torch.float32)
    x = gpu_check.EditInputs(size=64, text=24, neg_text=17, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        separate = gpu_check.step_separate(model, x)
        batched = gpu_check.step_batched(model, x)
    assert separate.shape == (1, 16, 64) and torch.isfinite(separate).all()
    assert torch.allclose(batched, separate, rtol=1e-4, atol=1e-5)
    # The padding is masked out: without the mask the negative half would differ.
    x.both_mask[:] = True
    with torch.inference_mode():
        unmasked = gpu_check.step_batched(model, x)
    assert not torch.allclose(unmasked, separate, rtol=1e-4, atol=1e-5)


def test_memory_section_runs_every_card_preset_in_smoke_mode(tmp_path):
    """The CPU smoke run of the memory section: each CUDA card preset placed by the trainer's
    loader with its savers (offload scaled to the 2 layers), trained a step, its plan beside
    it; no allocator meter on CPU, so no peak and no plan error."""
    import json

    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--device", "cpu", "--layers", "2", "--size", "256", "--skip-infer",
                    "--skip-train", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    rows = [r for r in results if r["bench"] == "gpu_memory_preset"]
    assert [r["card_gb"] for r in rows] == [24, 32, 48, 80]
    assert rows[0]["measured_savers"] == "fp8 base, 1 blocks offloaded"
    assert rows[2]["measured_as"] == "One 32 GB GPU"  # same savers and setting as the 32 GB one
    for r in rows:
        assert "error" not in r and r["loss_finite"] and r["samples_per_s"] > 0
        assert r["plan_phase"] == "training" and r["plan_gib"] > 15  # the real model's plan
        assert r["peak_gib"] is None and r["plan_rel_error"] is None and r["fits"] is None
    summary = next(r for r in results if r["bench"] == "gpu_memory_summary")
    assert summary["presets"] == [r["case"] for r in rows]
    assert summary["small_card_meets_goal"] is None  # a reduced model says nothing of speed
