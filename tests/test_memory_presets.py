"""The card presets against the memory plan, on the real model's shapes; and runs refused
before they start when the plan says they will not fit."""
from __future__ import annotations

import dataclasses

import pytest

from studio.engine.memory.plan import train_plan
from studio.engine.memory.shapes import shapes_folder
from studio.engine.memory.verdict import train_verdict
from studio.engine.savers import Savers
from studio.jobs import memory
from studio.jobs.launch import TrainOptions
from studio.jobs.presets import PRESET_CARD_GB, TRAIN_PRESETS

SEED_PIXELS = 262144  # MindSpeed-MM's max_pixels: 512x512 targets, with 1 MP edit images


@pytest.fixture(scope="module")
def real_shapes(tmp_path_factory):
    return shapes_folder(tmp_path_factory.mktemp("shapes"))


def preset(name: str) -> TrainOptions:
    return TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS[name]})


def fits(folder, opts: TrainOptions, card_gb: float) -> bool:
    s = memory.setting(opts)
    return train_verdict(folder, s, train_plan(folder, s), memory.card_budget(card_gb)).fits


@pytest.mark.parametrize("name", sorted(PRESET_CARD_GB))
def test_each_card_preset_fits_its_card_at_the_seed_setting(real_shapes, name):
    opts = preset(name)
    assert opts.max_pixels == SEED_PIXELS and opts.edit_image_auto_resize
    assert fits(real_shapes, opts, PRESET_CARD_GB[name])


@pytest.mark.parametrize("name", [n for n in PRESET_CARD_GB if TRAIN_PRESETS[n]["mode"] != "zero2"])
def test_each_card_preset_is_the_fastest_that_fits(real_shapes, name):
    """Every saver costs speed, so dropping one (or offloading one block fewer) must not fit."""
    opts, card = preset(name), PRESET_CARD_GB[name]
    lighter = []
    if opts.offload_blocks:
        lighter.append(dataclasses.replace(opts, offload_blocks=opts.offload_blocks - 1))
    elif opts.fp8_base:
        lighter.append(dataclasses.replace(opts, fp8_base=False))
    for option in lighter:
        assert not fits(real_shapes, option, card), option


def test_a_24_gb_card_without_savers_gets_the_savers_that_fit(real_shapes):
    opts = dataclasses.replace(preset("One 80 GB GPU"))
    s = memory.setting(opts)
    verdict = train_verdict(real_shapes, s, train_plan(real_shapes, s), memory.card_budget(24))
    assert not verdict.fits
    assert "needs" in verdict.message and "fp8 storage" in verdict.message
    assert "offload" in verdict.message and "blocks" in verdict.message


def test_zero2_shards_the_lora_state(real_shapes):
    single = memory.setting(dataclasses.replace(preset("One 80 GB GPU")))
    zero2 = dataclasses.replace(single, mode="zero2", processes_per_node=8)
    lora = "LoRA, gradients, optimizer"
    one, eight = train_plan(real_shapes, single).parts[lora], train_plan(real_shapes, zero2).parts[lora]
    assert eight == pytest.approx(one * (2 + 14 / 8) / 16, rel=1e-3)


def test_a_run_that_will_not_fit_is_refused_unless_overridden(demo_model):
    # 4 GP targets in fp32 without checkpointing: the demo's activations alone exceed the RAM.
    huge = dataclasses.replace(preset("Demo on CPU"), max_pixels=4 * 10**9, model=str(demo_model))
    with pytest.raises(ValueError, match="will not fit.*host RAM"):
        memory.check(huge, demo_model)
    planned = memory.check(dataclasses.replace(huge, ignore_memory_plan=True), demo_model)
    assert not planned.verdict.fits
    small = memory.check(dataclasses.replace(huge, max_pixels=4096), demo_model)
    assert small.verdict.fits and "fits" in small.verdict.message


def test_savers_in_the_plan_shrink_the_weights(real_shapes):
    base = memory.setting(preset("One 80 GB GPU"))
    plain = train_plan(real_shapes, base).parts["transformer weights"]
    fp8 = train_plan(real_shapes, dataclasses.replace(base, savers=Savers(fp8_base=True)))
    offloaded = train_plan(real_shapes, dataclasses.replace(base, savers=Savers(offload_blocks=30)))
    # fp8 halves the Linear layers (norms stay); 30 of 60 blocks leave the card.
    assert 0.45 < fp8.parts["transformer weights"] / plain < 0.55
    assert 0.45 < offloaded.parts["transformer weights"] / plain < 0.55


def test_edit_plan_on_the_real_shapes_shrinks_with_each_saver(real_shapes):
    from studio.engine.memory.plan import EditSetting, edit_plan

    plain = edit_plan(real_shapes, EditSetting())
    fp8 = edit_plan(real_shapes, EditSetting(savers=Savers(fp8_base=True)))
    streamed = edit_plan(real_shapes, EditSetting(savers=Savers(fp8_base=True, offload_blocks=40,
                                                                 text_encoder_offload=True)))
    # bf16: 38 GiB transformer + 15 GiB text encoder resident, so an 80 GB card but not 48.
    assert 50 < plain.device_gb < 60
    assert plain.device_gb - fp8.device_gb == pytest.approx(
        plain.parts["transformer weights"] - fp8.parts["transformer weights"])
    assert streamed.device_gb < 16 < fp8.device_gb


def test_studio_edit_plan_prints_the_plan_and_edits_nothing(demo_model, tmp_path, capsys):
    from PIL import Image

    from studio.cli import main

    Image.new("RGB", (96, 64), "red").save(tmp_path / "in.png")
    code = main(["edit", "--model", str(demo_model), "--device", "cpu", "--image",
                 str(tmp_path / "in.png"), "--prompt", "make it blue", "--plan", "--fp8-base"])
    out = capsys.readouterr().out
    assert code == 0 and "memory plan:" in out and "at the editing peak" in out and "fits" in out
    assert not list(tmp_path.glob("*.png"))[1:]  # only the input: nothing was edited


def test_a_gpu_run_planned_on_a_machine_without_one_gets_a_plan_but_no_verdict(real_shapes):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the verdict applies")
    planned = memory.run_plan(preset("One 24 GB GPU"), real_shapes)
    assert planned.verdict is None and planned.plan.device_gb > 10
    assert "memory plan:" in planned.text() and "FIT" not in planned.text()
