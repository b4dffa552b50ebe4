import json
import shutil

import pytest

from studio.engine.model_folder import ModelFolderError, inspect_model_folder


@pytest.fixture
def model_copy(demo_model, tmp_path):
    """A private copy of the demo model to break in different ways."""
    return shutil.copytree(demo_model, tmp_path / "model")


def test_demo_model_is_a_valid_single_image_edit_model(demo_model):
    info = inspect_model_folder(demo_model)
    assert info.pipeline_class == "QwenImageEditPipeline"
    assert info.max_images == 1 and info.is_demo


def test_a_2509_style_model_index_selects_the_plus_pipeline(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    (model_copy / "model_index.json").write_text(json.dumps(index))
    info = inspect_model_folder(model_copy)
    assert info.pipeline_class == "QwenImageEditPlusPipeline" and info.max_images == 3


def test_missing_folder_and_missing_index_are_named(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        inspect_model_folder(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match="model_index.json: missing"):
        inspect_model_folder(tmp_path)


def test_every_missing_component_is_listed(model_copy):
    shutil.rmtree(model_copy / "vae")
    (model_copy / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelFolderError) as err:
        inspect_model_folder(model_copy)
    assert any(p.endswith("vae: missing folder") for p in err.value.problems)
    assert any("scheduler_config.json: missing" in p for p in err.value.problems)


def test_a_text_to_image_model_is_refused(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = "QwenImagePipeline"
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="not an edit pipeline"):
        inspect_model_folder(model_copy)


def test_shards_come_from_the_index_and_a_missing_one_is_named(model_copy):
    # Turn the transformer's single weight file into a two-shard layout, as the real
    # model ships, then lose one shard.
    from safetensors.torch import load_file, save_file

    folder = model_copy / "transformer"
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(weights)
    half = len(names) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: weights[k].contiguous() for k in keys}, folder / shard)
        weight_map.update({k: shard for k in keys})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert inspect_model_folder(model_copy).pipeline_class == "QwenImageEditPipeline"

    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="00002-of-00002.safetensors: missing shard"):
        inspect_model_folder(model_copy)
