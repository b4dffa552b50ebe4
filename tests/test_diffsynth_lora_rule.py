"""DiffSynth-Studio can continue our LoRAs: the copy that `adapters convert --to diffsynth` and
the recipe export write is keyed the way its `--lora_checkpoint` loads a file.

Its rule, restated from DiffSynth-Studio's training module (not its code): train.py adds
peft LoRA layers to the DiT (`inject_adapter_in_model`, alpha = rank, so scale 1); a key ending
in `lora_A.weight` / `lora_B.weight` is renamed to `lora_A.default.weight` / `lora_B.default.weight`,
a key already ending so is kept, every other key is dropped; the result goes to the DiT's
`load_state_dict(strict=False)`, which only prints the keys it did not know. No prefix is
stripped, so `diffusion_model.`-keyed files load nothing there, silently. The DiT's module
names are diffusers' (DiffSynth reads the released diffusers-layout weights by name), so the
demo transformer stands in for it."""
from __future__ import annotations

import re
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from studio.dataset.synthetic_pairs import add_synthetic_pairs
from studio.engine import lora_tools
from studio.jobs.launch import TrainOptions
from studio.jobs.presets import TRAIN_PRESETS
from studio.recipe.export import LORA_COPY, export_recipe
from studio.store import Store
from studio.engine.lora_targets import DEFAULT_TARGETS
from tests.lora_files import random_lora, save_lora

RANK = 4
_PLAIN = re.compile(r"\.lora_([AB])\.weight$")
_PEFT = re.compile(r"\.lora_[AB]\.default\.weight$")


def diffsynth_keys(state: dict) -> dict:
    """What DiffSynth's --lora_checkpoint hands to load_state_dict (the rule above)."""
    out = {}
    for key, value in state.items():
        if _PEFT.search(key):
            out[key] = value
        elif _PLAIN.search(key):
            out[_PLAIN.sub(r".lora_\1.default.weight", key)] = value
    return out


def diffsynth_dit(demo_model):
    from diffusers import QwenImageTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model

    dit = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer")
    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=DEFAULT_TARGETS.split(","))
    return inject_adapter_in_model(config, dit)


def load_as_diffsynth(demo_model, path):
    """(keys it loaded, keys it did not know, the DiT's LoRA parameters)."""
    dit = diffsynth_dit(demo_model)
    mapped = diffsynth_keys(load_file(str(path)))
    result = dit.load_state_dict(mapped, strict=False)
    lora = {n: p for n, p in dit.named_parameters() if ".lora_" in n}
    return set(mapped) - set(result.unexpected_keys), set(result.unexpected_keys), lora


@pytest.fixture(scope="module")
def ours(demo_model, tmp_path_factory):
    """A LoRA as the trainer saves it (diffusion_model. prefix)."""
    return save_lora(random_lora(demo_model, rank=RANK, seed=9),
                     tmp_path_factory.mktemp("ours") / "ours.safetensors", "comfyui")


def test_our_own_layout_loads_nothing_in_diffsynth(demo_model, ours):
    loaded, unknown, _ = load_as_diffsynth(demo_model, ours)
    assert not loaded and len(unknown) == len(load_file(str(ours)))  # the bug the copy avoids


def test_the_diffsynth_copy_matches_every_key_with_the_same_delta(demo_model, ours, tmp_path):
    copy = lora_tools.convert(ours, tmp_path / "ds.safetensors", "diffsynth", demo_model).path
    loaded, unknown, lora = load_as_diffsynth(demo_model, copy)
    assert not unknown and len(loaded) == len(load_file(str(copy)))
    original = load_file(str(ours))
    for name in loaded:  # the same values under the new names; scale 1 there and here
        source = "diffusion_model." + name.replace(".default.weight", ".weight")
        assert torch.equal(lora[name].detach(), original[source])


def test_recipe_export_writes_the_lora_to_start_from_as_a_diffsynth_copy(projects, demo_model, ours, tmp_path):
    store = Store(projects)
    store.create_project("cats")
    add_synthetic_pairs(store, "cats", 4)
    adapter = store.add_adapter("cats", "ours", ours)
    options = TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS["Reference recipe: 8 Ascend NPUs, ZeRO-2"],
                                      "lora_rank": RANK, "lora_checkpoint": str(adapter["id"])})
    script = export_recipe(store, "cats", demo_model, tmp_path / "out", options)
    argv = subprocess.run(["bash", str(script)], capture_output=True, check=True,
                          env={"DRY_RUN": "1", "PATH": "/usr/bin:/bin"}).stdout.decode().split("\0")[:-1]
    copy = argv[argv.index("--lora_checkpoint") + 1]
    assert copy == str(script.parent / LORA_COPY)
    loaded, unknown, lora = load_as_diffsynth(demo_model, copy)
    assert not unknown and loaded == {n for n in lora if any(f".{t}.lora_" in n for t in
                                                             ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                              "add_k_proj", "add_v_proj", "to_add_out",
                                                              "img_mlp.net.2", "txt_mlp.net.2"))}
    assert LORA_COPY in (script.parent / "README.txt").read_text()

    wrong_rank = TrainOptions.from_dict({**options.as_dict(), "lora_rank": 8})
    with pytest.raises(ValueError, match="rank 4"):
        export_recipe(store, "cats", demo_model, tmp_path / "refused", wrong_rank)
    assert not (tmp_path / "refused").exists()
