"""Ascend NPU support without an NPU: fused-operator patches, environment, the recipe's accelerate config.

No machine here has an NPU, so `fake_torch_npu` puts a TEST-ONLY stand-in for torch_npu
(tests/fake_torch_npu) on the path: torch_npu's operator signatures and conventions with
reference math. The patched demo transformer must then give the unpatched outputs.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
# Imported before the stand-in is on the path, as when diffusers comes first in a process:
# diffusers then has its NPU paths off, and apply_patches must switch them on itself.
from diffusers import QwenImageTransformer2DModel
from diffusers.models import attention_dispatch
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers import transformer_qwenimage

from studio.engine.npu import (RECIPE_ENV, apply_patches, find_set_env, npu_env, remove_patches,
                               training_env)
from studio.engine.npu.patches import FusedRMSNorm

FAKE_ROOT = Path(__file__).parent / "fake_torch_npu"


@pytest.fixture
def fake_torch_npu(monkeypatch):
    # Whatever apply_patches rebinds inside diffusers is restored after the test.
    for module, name in ((attention_dispatch, "npu_fusion_attention"),
                         (attention_dispatch, "_CAN_USE_NPU_ATTN"),
                         (transformer_qwenimage, "apply_rotary_emb_qwen")):
        monkeypatch.setattr(module, name, getattr(module, name))
    had_npu = hasattr(torch, "npu")
    monkeypatch.syspath_prepend(str(FAKE_ROOT))
    fake = importlib.import_module("torch_npu")
    fake.calls.clear()
    yield fake
    sys.modules.pop("torch_npu", None)
    if not had_npu and hasattr(torch, "npu"):
        del torch.npu


@pytest.fixture(scope="module")
def transformer(demo_model):
    model = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer",
                                                        dtype=torch.float32).eval()
    # The demo's RMSNorm weights are all ones; vary them so a norm that ignored its gamma fails.
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, RMSNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
    return model


def _inputs(model, padded=True, seed=0):
    """Two samples, 4x4 latent patches each; the second sample's text is 3 tokens shorter."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    h = w = 4
    text_len = 7
    mask = torch.ones(2, text_len, dtype=torch.bool)
    if padded:
        mask[1, -3:] = False
    return dict(
        hidden_states=torch.randn(2, h * w, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(2, text_len, cfg.joint_attention_dim, generator=g),
        encoder_hidden_states_mask=mask,
        timestep=torch.tensor([0.3, 0.7]),
        img_shapes=[[(1, h, w)], [(1, h, w)]],
        return_dict=False,
    )


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


# -- the stand-in itself computes the documented math ----------------------------------
@pytest.mark.parametrize("layout", ["BSH", "SBH", "BSND", "BNSD"])
def test_stand_in_attention_matches_sdpa_in_every_layout(fake_torch_npu, layout):
    g = torch.Generator().manual_seed(1)
    b, n, s, d = 2, 3, 5, 8
    q, k, v = (torch.randn(b, n, s, d, generator=g) for _ in range(3))
    keep = torch.ones(b, 1, s, s, dtype=torch.bool)
    keep[0, ..., -2:] = False  # sample 0 may not attend to its last two keys
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    def to_layout(t):
        return {"BNSD": t, "BSND": t.transpose(1, 2), "BSH": t.transpose(1, 2).flatten(2),
                "SBH": t.permute(2, 0, 1, 3).flatten(2)}[layout]

    out = fake_torch_npu.npu_fusion_attention(
        to_layout(q), to_layout(k), to_layout(v), n, layout,
        atten_mask=~keep,  # torch_npu: True means masked out
        scale=d ** -0.5)[0]
    assert out.shape == to_layout(q).shape
    torch.testing.assert_close(out, to_layout(expected))


def test_stand_in_band_of_pre_and_next_tokens(fake_torch_npu):
    """sparse_mode 0 computes only keys within pre_tockens before / next_tockens after."""
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    only_self = fake_torch_npu.npu_fusion_attention(q, k, v, 2, "BSND", pre_tockens=0,
                                                    next_tockens=0, scale=0.3)[0]
    torch.testing.assert_close(only_self, v)


def test_stand_in_rejects_an_additive_float_mask(fake_torch_npu):
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(TypeError, match="bool or uint8"):
        fake_torch_npu.npu_fusion_attention(q, q, q, 2, "BSND", atten_mask=torch.zeros(1, 1, 4, 4))


def test_stand_in_rms_norm_returns_y_and_rstd(fake_torch_npu):
    x, gamma = torch.randn(3, 5, 16), torch.rand(16) + 0.5
    y, rstd = fake_torch_npu.npu_rms_norm(x, gamma, epsilon=1e-6)
    expected = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        expected.weight.copy_(gamma)
    torch.testing.assert_close(y, expected(x))
    assert rstd.shape == (3, 5, 1)
    torch.testing.assert_close(rstd, x.pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt())


# -- patches ---------------------------------------------------------------------------
def test_without_torch_npu_nothing_changes(transformer):
    assert importlib.util.find_spec("torch_npu") is None  # the real one is not installed here
    classes_before = [type(m) for m in transformer.modules()]
    before = _run(transformer, _inputs(transformer))
    assert apply_patches(transformer, rotary=True) == []
    assert [type(m) for m in transformer.modules()] == classes_before
    assert all(getattr(m.processor, "_attention_backend", None) is None
               for m in transformer.modules() if hasattr(m, "processor"))
    assert not hasattr(transformer_qwenimage.apply_rotary_emb_qwen, "_studio_original")
    torch.testing.assert_close(_run(transformer, _inputs(transformer)), before, rtol=0, atol=0)


def test_patched_transformer_matches_unpatched_with_text_padding(fake_torch_npu, transformer):
    inputs = _inputs(transformer, padded=True)
    expected = _run(transformer, inputs)
    try:
        assert apply_patches(transformer) == ["attention", "rms_norm"]
        fake_torch_npu.calls.clear()
        got = _run(transformer, inputs)
        layers = transformer.config.num_layers
        # One joint attention per block; q, k, added q, added k per block, plus txt_norm.
        assert fake_torch_npu.calls["npu_fusion_attention"] == layers
        assert fake_torch_npu.calls["npu_rms_norm"] == 4 * layers + 1
        assert fake_torch_npu.calls["npu_rotary_mul"] == 0
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # The padding is honoured: changing the padded text tokens changes nothing.
        noisy = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        noisy["encoder_hidden_states"][1, -3:] += 10.0
        torch.testing.assert_close(_run(transformer, noisy)[1], got[1], rtol=1e-5, atol=1e-5)
    finally:
        assert remove_patches(transformer) == ["attention", "rms_norm"]
    assert not any(isinstance(m, FusedRMSNorm) for m in transformer.modules())
    torch.testing.assert_close(_run(transformer, inputs), expected, rtol=0, atol=0)


def test_patched_transformer_in_bf16(fake_torch_npu, transformer):
    """bf16, as on a real NPU: the fused path keeps dtypes and stays within bf16 rounding."""
    model = copy.deepcopy(transformer).to(torch.bfloat16)
    inputs = _inputs(model, padded=True)
    inputs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in inputs.items()}
    expected = _run(model, inputs)
    assert apply_patches(model) == ["attention", "rms_norm"]
    got = _run(model, inputs)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=2e-2, atol=2e-2)


def test_patched_gradients_match(fake_torch_npu, transformer):
    """The trainer backpropagates through the fused operators."""
    def input_grad():
        inputs = _inputs(transformer, padded=True, seed=3)
        inputs["hidden_states"].requires_grad_(True)
        transformer(**inputs)[0].square().mean().backward()
        return inputs["hidden_states"].grad

    expected = input_grad()
    try:
        apply_patches(transformer)
        fake_torch_npu.calls.clear()
        got = input_grad()
        assert fake_torch_npu.calls["npu_fusion_attention"] == transformer.config.num_layers
    finally:
        remove_patches(transformer)
        transformer.zero_grad(set_to_none=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_rotary_patch_is_opt_in_and_exact(fake_torch_npu, transformer):
    inputs = _inputs(transformer)
    expected = _run(transformer, inputs)
    try:
        patched = apply_patches(transformer, attention=False, rms_norm=False, rotary=True)
        assert patched == ["rotary"]
        fake_torch_npu.calls.clear()
        got = _run(transformer, inputs)
        # q and k of both streams in every block.
        assert fake_torch_npu.calls["npu_rotary_mul"] == 4 * transformer.config.num_layers
        assert fake_torch_npu.calls["npu_fusion_attention"] == 0
        assert fake_torch_npu.calls["npu_rms_norm"] == 0
    finally:
        assert remove_patches(transformer) == ["rotary"]
    assert not hasattr(transformer_qwenimage.apply_rotary_emb_qwen, "_studio_original")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switch, kept, silent", [
    ({"attention": False}, ["rms_norm"], "npu_fusion_attention"),
    ({"rms_norm": False}, ["attention"], "npu_rms_norm"),
])
def test_each_patch_can_be_switched_off(fake_torch_npu, transformer, switch, kept, silent):
    try:
        assert apply_patches(transformer, **switch) == kept
        fake_torch_npu.calls.clear()
        _run(transformer, _inputs(transformer))
        assert fake_torch_npu.calls[silent] == 0
        other = {"npu_fusion_attention", "npu_rms_norm"} - {silent}
        assert fake_torch_npu.calls[other.pop()] > 0
    finally:
        remove_patches(transformer)


def test_fused_rms_norm_keeps_weights_and_state_dict_keys(fake_torch_npu, transformer):
    keys = list(transformer.state_dict())
    try:
        apply_patches(transformer, attention=False)
        norm = transformer.transformer_blocks[0].attn.norm_q
        assert isinstance(norm, FusedRMSNorm) and isinstance(norm, RMSNorm)
        assert list(transformer.state_dict()) == keys
    finally:
        remove_patches(transformer)
    assert type(transformer.transformer_blocks[0].attn.norm_q) is RMSNorm


def test_editor_leaves_cpu_pipelines_unpatched(demo_editor):
    """The editor patches only on npu devices: on CPU the pipeline's transformer is as
    diffusers made it."""
    transformer = demo_editor.pipeline.transformer
    assert not any(isinstance(m, FusedRMSNorm) for m in transformer.modules())


# -- environment -------------------------------------------------------------------------
def test_npu_env_defaults_are_the_seed_scripts():
    env = npu_env()
    assert env == RECIPE_ENV
    assert env["ASCEND_SLOG_PRINT_TO_STDOUT"] == "0"
    assert env["ASCEND_GLOBAL_LOG_LEVEL"] == "3"
    assert env["TASK_QUEUE_ENABLE"] == "2"
    assert env["COMBINED_ENABLE"] == "1"
    assert env["CPU_AFFINITY_CONF"] == "1"
    assert env["HCCL_CONNECT_TIMEOUT"] == "1200"
    assert env["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
    assert env["ACLNN_CACHE_LIMIT"] == "100000"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["HCCL_DETERMINISTIC"] == "True"
    assert "HCCL_EXEC_TIMEOUT" not in env  # the seed leaves it to CANN


def test_npu_env_overrides_replace_add_and_drop():
    env = npu_env({"TASK_QUEUE_ENABLE": 1, "HCCL_EXEC_TIMEOUT": "7200", "HCCL_DETERMINISTIC": None})
    assert env["TASK_QUEUE_ENABLE"] == "1"
    assert env["HCCL_EXEC_TIMEOUT"] == "7200"
    assert "HCCL_DETERMINISTIC" not in env
    assert RECIPE_ENV["TASK_QUEUE_ENABLE"] == "2"  # the defaults are not mutated
    with pytest.raises(ValueError, match="BAD NAME"):
        npu_env({"BAD NAME": "1"})


def _write_set_env(folder: Path) -> Path:
    script = folder / "set_env.sh"
    script.write_text(
        'echo "sourcing CANN"\n'  # set_env.sh output must not end up in the environment
        'export ASCEND_TOOLKIT_HOME=/opt/fake/ascend-toolkit/latest\n'
        'export LD_LIBRARY_PATH=${ASCEND_TOOLKIT_HOME}/lib64:${LD_LIBRARY_PATH}\n'
        'export ASCEND_OPP_PATH="${ASCEND_TOOLKIT_HOME}/opp with space"\n'
        'export TASK_QUEUE_ENABLE=0\n')
    return script


def test_training_env_sources_set_env_then_applies_npu_env(tmp_path):
    script = _write_set_env(tmp_path)
    base = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/usr/lib/existing", "KEEP_ME": "yes"}
    env = training_env(base=base, overrides={"OMP_NUM_THREADS": 4}, set_env_path=script)
    assert env["ASCEND_TOOLKIT_HOME"] == "/opt/fake/ascend-toolkit/latest"
    assert env["LD_LIBRARY_PATH"] == "/opt/fake/ascend-toolkit/latest/lib64:/usr/lib/existing"
    assert env["ASCEND_OPP_PATH"] == "/opt/fake/ascend-toolkit/latest/opp with space"
    assert env["KEEP_ME"] == "yes"
    assert env["TASK_QUEUE_ENABLE"] == "2"  # the recipe's value wins over set_env.sh's
    assert env["OMP_NUM_THREADS"] == "4"
    assert not any("sourcing CANN" in v for v in env.values())


def test_training_env_without_cann_is_base_plus_npu_env(tmp_path):
    base = {"PATH": "/usr/bin:/bin"}
    env = training_env(base=base, candidates=(str(tmp_path / "absent.sh"),))
    assert env == {**base, **RECIPE_ENV}
    assert find_set_env(candidates=(str(tmp_path / "absent.sh"),)) is None


def test_default_set_env_locations_are_searched_in_order(tmp_path):
    (tmp_path / "new").mkdir()
    second = _write_set_env(tmp_path / "new")
    assert find_set_env(candidates=(str(tmp_path / "old/set_env.sh"), str(second))) == second


def test_a_configured_set_env_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.sh"):
        training_env(base={}, set_env_path=tmp_path / "nowhere.sh")


def test_a_failing_set_env_is_reported(tmp_path):
    script = tmp_path / "set_env.sh"
    script.write_text("echo broken install >&2\nreturn 3\n")
    with pytest.raises(RuntimeError, match="broken install"):
        training_env(base={"PATH": "/usr/bin:/bin"}, set_env_path=script)


# -- the recipe's accelerate config ---------------------------------------------------------
def ascend_config(**overrides) -> dict:
    from studio.trainer.accelerate_config import CONFIG_PRESETS, make_config

    return make_config(**{**CONFIG_PRESETS["ascend-8-zero2"], **overrides})


def test_seed_preset_is_eight_cards_zero2_bf16(tmp_path):
    """The values of the reference recipe's file (Ascend/MindSpeed-MM 37ccda3,
    examples/diffsynth/qwen_image_edit/accelerate_config.yaml) written out literally, held
    against what the studio writes, and the file read back by accelerate's own loader (what
    `accelerate launch` does)."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    from studio.trainer.accelerate_config import write_config

    config = ascend_config()
    assert config["deepspeed_config"] == {
        "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "offload_optimizer_device": "none", "offload_param_device": "none",
        "zero3_init_flag": False, "zero_stage": 2}
    assert (config["distributed_type"], config["mixed_precision"]) == ("DEEPSPEED", "bf16")
    assert (config["num_processes"], config["num_machines"], config["machine_rank"]) == (8, 1, 0)
    assert "main_process_ip" not in config
    assert (config["rdzv_backend"], config["same_network"], config["use_cpu"]) == ("static", True, False)
    assert config["main_training_function"] == "main"
    assert not any(key.startswith("tpu_") for key in config)  # the recipe's leftovers dropped

    loaded = load_config_from_file(str(write_config(tmp_path / "seed.yaml", config)))
    assert isinstance(loaded, ClusterConfig)  # LOCAL_MACHINE, no unknown keys
    assert loaded.distributed_type == DistributedType.DEEPSPEED
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (8, 1, 0)
    assert loaded.mixed_precision == "bf16"
    assert loaded.deepspeed_config["zero_stage"] == 2
    assert loaded.deepspeed_config["gradient_clipping"] == 1.0
    assert loaded.deepspeed_config["offload_optimizer_device"] == "none"
    assert loaded.deepspeed_config["gradient_accumulation_steps"] == 1
    assert loaded.use_cpu is False and loaded.same_network is True
    assert loaded.rdzv_backend == "static"


def test_seed_preset_over_two_nodes(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    from studio.trainer.accelerate_config import write_config

    config = ascend_config(num_processes=16, num_machines=2, machine_rank=1,
                           main_process_ip="10.0.0.1", main_process_port=6789)
    loaded = load_config_from_file(str(write_config(tmp_path / "node1.yaml", config)))
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (16, 2, 1)
    assert (loaded.main_process_ip, loaded.main_process_port) == ("10.0.0.1", 6789)
    # one `accelerate launch` per node, not DeepSpeed's pdsh over ssh
    assert loaded.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    assert loaded.deepspeed_config["zero_stage"] == 2
    assert "deepspeed_multinode_launcher" not in ascend_config()["deepspeed_config"]
    with pytest.raises(ValueError, match="main_process_ip"):
        ascend_config(num_machines=2, machine_rank=0, main_process_ip="")
    with pytest.raises(ValueError, match="machine_rank 2"):
        ascend_config(num_machines=2, machine_rank=2, main_process_ip="10.0.0.1")
