"""The editor's memory savers (fp8 base, block and text-encoder offload) on the demo model.

On the CPU the offloaded layers' hooks still run (onload and offload device are both the
CPU), so an offloaded edit must give the very same pixels; fp8 storage rounds the weights,
so its edit is only close.
"""
import numpy as np
import pytest

from studio.cli import build_parser, main
from studio.cli.edit import make_editor
from studio.engine.adapters import AdapterRef
from studio.engine.editor import Editor
from studio.engine.savers import FP8, Savers
from tests.conftest import make_image
from tests.lora_files import random_lora, save_lora

PROMPT = "add a red hat"
KW = dict(seed=4, steps=2, size=(64, 64), true_cfg_scale=1.0)
FP8_MEAN_TOLERANCE = 1.0  # levels of 255; measured 0.15 (base) and 0.26 (with an adapter)


def pixels(editor, adapters=()):
    return np.asarray(editor.edit(make_image(), PROMPT, adapters=list(adapters), **KW).image,
                      dtype=np.int16)


def offloaded(transformer) -> list[str]:
    """The modules that diffusers' group offloading moves on and off the device."""
    return [name for name, module in transformer.named_modules()
            if getattr(module, "_diffusers_hook", None) is not None
            and module._diffusers_hook.get_hook("group_offloading") is not None]


@pytest.fixture(scope="module")
def adapter(demo_model, tmp_path_factory):
    path = save_lora(random_lora(demo_model, seed=1),
                     tmp_path_factory.mktemp("savers") / "a.safetensors")
    return AdapterRef(path)


@pytest.fixture(scope="module")
def full(demo_editor, adapter):
    """The full-precision, nothing-offloaded edit, without and with the adapter."""
    return pixels(demo_editor), pixels(demo_editor, [adapter])


def test_offloaded_blocks_and_text_encoder_give_the_same_pixels_adapter_included(
        demo_model, full, adapter):
    editor = Editor(demo_model, device="cpu", savers=Savers(offload_blocks=1, text_encoder_offload=True))
    assert editor.savers == Savers(offload_blocks=1, text_encoder_offload=True)
    base = pixels(editor)
    transformer = editor.pipeline.transformer
    assert offloaded(transformer) and all(n.startswith("transformer_blocks.0.")
                                          for n in offloaded(transformer))
    assert np.array_equal(base, full[0])

    with_adapter = pixels(editor, [adapter])
    assert np.abs(with_adapter - base).mean() > 1  # the adapter does change the edit
    assert np.array_equal(with_adapter, full[1])  # and exactly as without offload
    # diffusers re-offloads the whole transformer after a LoRA load; the editor keeps the
    # layout: block 1 stays on the device, block 0's new LoRA layers are offloaded with it.
    names = offloaded(transformer)
    assert all(n.startswith("transformer_blocks.0.") for n in names)
    assert any(".lora_A." in n for n in names)
    assert np.array_equal(pixels(editor), full[0])  # adapter off again: the base edit


def test_fp8_base_stays_close_to_full_precision_adapter_included(demo_model, demo_editor, full,
                                                                 adapter):
    editor = Editor(demo_model, device="cpu", savers=Savers(fp8_base=True))
    # fp8 touches the transformer only: the prompt and image encodings of the full-precision
    # editor are this one's too (saves the test encoding the 1 MP condition image again).
    editor.encoding_memo = demo_editor.encoding_memo
    base = pixels(editor)
    block = editor.pipeline.transformer.transformer_blocks[0]
    assert block.attn.to_q.weight.dtype == FP8
    with_adapter = pixels(editor, [adapter])
    # The adapter's own weights stay in the compute dtype, not rounded to fp8.
    lora_a = block.attn.to_q.lora_A
    assert lora_a[next(iter(lora_a))].weight.dtype == editor.dtype
    base_diff = np.abs(base - full[0]).mean()
    adapter_diff = np.abs(with_adapter - full[1]).mean()
    print(f"fp8 base vs full precision, mean abs pixel difference: {base_diff:.3f} without, "
          f"{adapter_diff:.3f} with the adapter (max {np.abs(with_adapter - full[1]).max()})")
    assert 0 < base_diff < FP8_MEAN_TOLERANCE  # > 0: the weights really are stored in fp8
    assert adapter_diff < FP8_MEAN_TOLERANCE
    assert np.abs(with_adapter - base).mean() > 1
    assert editor.edit(make_image(), PROMPT, **KW).params["memory_savers"] == "fp8 base"


@pytest.mark.parametrize("savers, reason", [
    (dict(offload_blocks=99), "has 2 transformer blocks; cannot offload 99"),
    (dict(offload_blocks=-1), "cannot be negative"),
    (dict(cpu_offload=True, offload_blocks=1), "--cpu-offload moves whole components"),
    (dict(cpu_offload=True, text_encoder_offload=True), "refuses on group-offloaded"),
    (dict(quantize_base="int8"), "computes in bf16"),  # the CPU's default dtype is fp32
    (dict(quantize_base="int4"), "unknown base quantization"),
    (dict(fp8_base=True, quantize_base="int8", dtype="bf16"), "choose one"),
])
def test_impossible_combinations_are_refused_at_construction(demo_model, savers, reason):
    with pytest.raises(ValueError, match=reason):
        context = {k: savers.pop(k) for k in ("cpu_offload", "dtype") if k in savers}
        Editor(demo_model, device="cpu", savers=Savers(**savers), **context)


def test_cli_flags_reach_the_editor(demo_model, tmp_path, capsys):
    image = tmp_path / "in.png"
    make_image(32, 32).save(image)
    common = ["--model", str(demo_model), "--device", "cpu", "--image", str(image),
              "--prompt", PROMPT]
    edit = build_parser().parse_args(["edit", *common, "--out", str(tmp_path / "o.png"),
                                      "--fp8-base", "--offload-blocks", "1"])
    assert make_editor(edit).savers == Savers(fp8_base=True, offload_blocks=1)
    compare = build_parser().parse_args(["compare", *common, "--adapters", "base",
                                         "--out", str(tmp_path / "g.png"),
                                         "--text-encoder-offload", "--quantize-base", "int8",
                                         "--dtype", "bf16"])
    assert make_editor(compare).savers == Savers(quantize_base="int8", text_encoder_offload=True)
    # An impossible combination stops the command before any model loads, saying why.
    assert main(["edit", *common, "--out", str(tmp_path / "o.png"), "--cpu-offload",
                 "--offload-blocks", "1"]) == 2
    assert "--cpu-offload moves whole components" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_the_app_takes_the_same_flags():
    from studio.ui.app import parse_args

    args = parse_args(["--fp8-base", "--offload-blocks", "2", "--text-encoder-offload",
                       "--quantize-base", "none"])
    assert Savers.of(args) == Savers(fp8_base=True, offload_blocks=2, text_encoder_offload=True)
