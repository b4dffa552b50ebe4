"""The encoded-pair cache: computed once per pair through the pipeline's own encoders, and
recomputed only for what changed."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import make_image
from tests.trainer_helpers import FAST, make_dataset


def _source(demo_model, ds, *extra):
    from studio.engine.model_folder import inspect_model_folder
    from studio.trainer.args import parse_args
    from studio.trainer.data import load_pairs
    from studio.trainer.encoding import encoded_source

    args = parse_args(["--model_path", str(demo_model), "--dataset_base_path", str(ds), *FAST,
                       "--output_path", str(ds.parent / "out"), *extra])
    pairs = load_pairs(ds)
    get = encoded_source(args, pairs, inspect_model_folder(demo_model), torch.device("cpu"),
                          torch.float32, stop=False)
    return get, pairs


def _entries(ds):
    return {f: f.stat().st_mtime_ns for f in (ds / ".studio_cache").rglob("*.safetensors")}


def test_only_new_or_changed_pairs_are_encoded(demo_model, tmp_path):
    ds = make_dataset(tmp_path / "ds", n=3)
    get, _ = _source(demo_model, ds)
    first = _entries(ds)
    assert len(first) == 3
    _source(demo_model, ds)
    assert _entries(ds) == first  # nothing rewritten

    make_image(64, 64, seed=42).save(ds / "images/edited_1.png")  # one target changes
    get, _ = _source(demo_model, ds)
    after = _entries(ds)
    assert len(after) == 4
    assert all(after[f] == t for f, t in first.items())  # the others untouched
    assert get(1)["target"].shape == (1, 16, 1, 8, 8)  # 64 px / VAE factor 8

    _source(demo_model, ds, "--max_pixels", "1024")  # another resolution: a new key per pair
    assert len(_entries(ds)) == 7


def test_encoding_is_the_pipeline_s_own(demo_model, tmp_path):
    """Prompt embeddings equal QwenImageEditPipeline.encode_prompt on the conditioning image,
    and the edit latents come after the reference's ~1 MP resize by default."""
    from diffusers import QwenImageEditPipeline

    ds = make_dataset(tmp_path / "ds", n=1)
    get, pairs = _source(demo_model, ds, "--edit_image_auto_resize")
    item = get(0)
    assert item["edit_0"].shape == (1, 16, 1, 128, 128)  # 1024x1024 conditioning image
    assert item["target"].shape == (1, 16, 1, 8, 8)

    pipe = QwenImageEditPipeline.from_pretrained(demo_model)
    source = make_image(64, 64, seed=0)
    cond = pipe.image_processor.resize(source, 1024, 1024)
    embeds, mask = pipe.encode_prompt(prompt=[pairs[0].prompt], image=cond, device="cpu")
    assert torch.allclose(item["prompt_embeds"], embeds, atol=1e-5)
    assert item["prompt_mask"].shape == embeds.shape[:2]


def test_dataset_problems_name_the_row(tmp_path):
    from studio.trainer.data import DatasetError, load_pairs

    ds = make_dataset(tmp_path / "ds", n=2)
    (ds / "images/source_1.png").unlink()
    with pytest.raises(DatasetError, match=r"metadata_edit.csv row 3: 'edit_image' file .*source_1.png"):
        load_pairs(ds)
