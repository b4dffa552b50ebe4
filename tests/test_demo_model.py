"""The demo model: real Qwen-Image-Edit layout and pipelines, tiny random weights, offline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from studio.engine.demo_model import DROP_IDX, MARKER, TEMPLATE_PREFIX, build_demo_model

COMPONENTS = ("transformer", "text_encoder", "vae", "tokenizer", "processor", "scheduler")


def class_name(folder) -> str:
    return json.loads((folder / "model_index.json").read_text())["_class_name"]


def random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def edit(pipe, images, seed: int) -> Image.Image:
    out = pipe(image=images, prompt="Make the sky blue", height=256, width=256,
               num_inference_steps=2, true_cfg_scale=1.0,
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("demo") / "model")


@pytest.fixture(scope="module")
def pipe(built):
    from diffusers import QwenImageEditPipeline

    pipe = QwenImageEditPipeline.from_pretrained(built, dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_layout_matches_the_real_model(built):
    index = json.loads((built / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPipeline"
    assert {name: index[name][1] for name in COMPONENTS} == {
        "transformer": "QwenImageTransformer2DModel",
        "text_encoder": "Qwen2_5_VLForConditionalGeneration",
        "vae": "AutoencoderKLQwenImage",
        "tokenizer": "Qwen2Tokenizer",
        "processor": "Qwen2VLProcessor",
        "scheduler": "FlowMatchEulerDiscreteScheduler",
    }
    for name in ("transformer", "text_encoder", "vae"):
        assert (built / name / "config.json").is_file()
        assert list((built / name).glob("*.safetensors"))
    assert (built / "tokenizer" / "tokenizer_config.json").is_file()
    assert (built / "processor" / "processor_config.json").is_file()
    assert (built / "scheduler" / "scheduler_config.json").is_file()
    marker = json.loads((built / MARKER).read_text())
    assert marker["demo"] is True and marker["native_area"] == 65536
    assert "noise" in marker["note"]
    # Built beside its final place and renamed: nothing half-written is left around.
    assert [p.name for p in built.parent.iterdir()] == ["model"]


def test_configs_agree_with_each_other_and_the_real_model(built):
    from transformers import Qwen2Tokenizer

    read = lambda name: json.loads((built / name).read_text())  # noqa: E731
    text_encoder = read("text_encoder/config.json")
    transformer = read("transformer/config.json")
    vae = read("vae/config.json")
    scheduler = read("scheduler/scheduler_config.json")
    tok = Qwen2Tokenizer.from_pretrained(built / "tokenizer")

    for key, token in [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"),
                       ("vision_end_token_id", "<|vision_end|>")]:
        assert text_encoder[key] == tok.convert_tokens_to_ids(token)
    text = text_encoder["text_config"]
    assert len(tok) <= text["vocab_size"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    assert text_encoder["vision_config"]["out_hidden_size"] == text["hidden_size"]
    assert transformer["joint_attention_dim"] == text["hidden_size"]
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"]
    assert (transformer["in_channels"], transformer["out_channels"]) == (64, 16)
    assert len(vae["temperal_downsample"]) == 3 and vae["z_dim"] == 16
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == 16
    assert scheduler["use_dynamic_shifting"] and scheduler["shift_terminal"] == 0.02
    assert (scheduler["base_shift"], scheduler["max_shift"]) == (0.5, 0.9)
    # The pipelines drop the first 64 positions: exactly the system part of the template.
    ids = tok(TEMPLATE_PREFIX + "<|vision_start|>")["input_ids"]
    assert len(ids) == DROP_IDX + 1
    assert ids[DROP_IDX] == tok.convert_tokens_to_ids("<|vision_start|>")


def test_edit_runs_and_is_deterministic(pipe):
    image = random_image(96, 64, seed=0)
    first = edit(pipe, image, seed=1)
    assert isinstance(first, Image.Image) and first.size == (256, 256)
    again = edit(pipe, image, seed=1)
    other = edit(pipe, image, seed=2)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_weights_depend_on_seed_alone(tmp_path):
    def weights(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.safetensors")}

    a = weights(build_demo_model(tmp_path / "a", seed=0))
    b = weights(build_demo_model(tmp_path / "b", seed=0))
    c = weights(build_demo_model(tmp_path / "c", seed=1))
    assert a == b
    assert all(a[name] != c[name] for name in a)


def test_rebuild_replaces_a_demo_but_never_other_folders(tmp_path):
    out = build_demo_model(tmp_path / "demo", seed=0)
    build_demo_model(out, plus=True)
    assert class_name(out) == "QwenImageEditPlusPipeline"

    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError):
        build_demo_model(foreign)
    assert [p.name for p in foreign.iterdir()] == ["model_index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "real"]


def test_plus_model_edits_with_two_images(tmp_path):
    from diffusers import QwenImageEditPlusPipeline

    out = build_demo_model(tmp_path / "plus", plus=True)
    assert class_name(out) == "QwenImageEditPlusPipeline"
    pipe = QwenImageEditPlusPipeline.from_pretrained(out, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is QwenImageEditPlusPipeline
    result = edit(pipe, [random_image(96, 64, seed=0), random_image(64, 80, seed=1)], seed=3)
    assert isinstance(result, Image.Image) and result.size == (256, 256)
