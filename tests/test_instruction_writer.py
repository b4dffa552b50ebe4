"""The instruction writer's model choice, prompt and text rules, and a generation on the
demo model's own text encoder."""
import shutil

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from studio.engine.instruction_writer import (INSTRUCTION_PROMPT, SUGGESTED_VL, EmptyInstruction,
                                              InstructionWriter, VLFolderError, build_prompt,
                                              choose_vl_model, clean_instruction, has_lm_head)
from tests.conftest import make_image


def headless_copy(demo_model, folder):
    """A model folder whose text encoder's weights lack lm_head (as a prompt-encoder-only
    checkpoint ships), the rest as the demo's."""
    for part in ("processor", "tokenizer"):
        shutil.copytree(demo_model / part, folder / part)
    (folder / "text_encoder").mkdir(parents=True)
    shutil.copy(demo_model / "text_encoder" / "config.json", folder / "text_encoder")
    weights = load_file(demo_model / "text_encoder" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("lm_head.")},
              folder / "text_encoder" / "model.safetensors")
    return folder


def test_the_demo_folder_writes_with_its_own_text_encoder(demo_model):
    assert has_lm_head(demo_model / "text_encoder")
    vl = choose_vl_model(demo_model)
    assert vl.weights == demo_model / "text_encoder" and vl.processor == demo_model / "processor"
    assert "own text encoder" in vl.label and vl.is_demo
    writer = InstructionWriter(vl, device="cpu", max_new_tokens=12)
    text = writer.write([make_image(96, 64, 0)], make_image(96, 64, 1), build_prompt([], 5), 5)
    assert text.strip() and len(text.split()) <= 5  # nonsense, but text within the limit
    writer.release()
    assert writer._model is None


def test_a_text_encoder_without_lm_head_gets_a_message_naming_a_vl_folder(demo_model, tmp_path):
    folder = headless_copy(demo_model, tmp_path / "headless")
    assert not has_lm_head(folder / "text_encoder")
    with pytest.raises(VLFolderError) as caught:
        choose_vl_model(folder)
    message = str(caught.value)
    assert "no lm_head" in message and SUGGESTED_VL in message and "--vl-model" in message
    # Naming a VL folder instead works: the demo's text encoder is one (its own processor
    # is beside it, as in a transformers-layout VL folder).
    vl_folder = tmp_path / "vl"
    shutil.copytree(demo_model / "text_encoder", vl_folder)
    for name in (demo_model / "processor").iterdir():
        shutil.copy(name, vl_folder)
    assert choose_vl_model(folder, vl_folder).weights == vl_folder


def test_a_folder_that_is_not_a_vl_model_is_refused_clearly(demo_model, tmp_path):
    with pytest.raises(VLFolderError, match="not Qwen2.5-VL or Qwen3-VL"):
        choose_vl_model(demo_model, demo_model / "vae")
    with pytest.raises(VLFolderError, match="no config.json"):
        choose_vl_model(demo_model, demo_model / "tokenizer")
    with pytest.raises(VLFolderError, match="no such folder"):
        choose_vl_model(demo_model, tmp_path / "nothing")


def test_the_prompt_carries_the_dataset_style_and_the_limit():
    prompt = build_prompt(["Add a red hat to the cat", "", "Turn the sky purple"], 12)
    assert "At most 12 words" in prompt and "- Add a red hat to the cat" in prompt
    assert "- Turn the sky purple" in prompt and "{" not in prompt
    assert "Example:" in build_prompt([], 12)
    assert build_prompt([], 3, "Say {max_words} words. {examples}").startswith("Say 3 words.")
    with pytest.raises(ValueError, match="only use"):
        build_prompt([], 3, "Use {picture} here")
    assert "{examples}" in INSTRUCTION_PROMPT and "{max_words}" in INSTRUCTION_PROMPT


def test_generated_text_becomes_one_instruction_within_the_limit():
    assert clean_instruction('Instruction: "Add a hat to the dog."\nSecond line') == "Add a hat to the dog."
    assert clean_instruction("one two three four", max_words=2) == "one two"
    assert clean_instruction("\x0fturn\ufffd it blue") == "turn it blue"
    for empty in ("", "  \n ", '""'):
        with pytest.raises(EmptyInstruction):
            clean_instruction(empty)


def test_an_unloadable_vl_folder_fails_with_its_name(demo_model, tmp_path):
    # A folder that looks like a VL folder but whose weights do not load.
    broken = tmp_path / "broken"
    shutil.copytree(demo_model / "text_encoder", broken)
    for name in (demo_model / "processor").iterdir():
        shutil.copy(name, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    writer = InstructionWriter(choose_vl_model(None, broken), device="cpu")
    with pytest.raises(VLFolderError, match="could not be loaded as a VL model") as caught:
        writer.write([Image.new("RGB", (64, 64))], Image.new("RGB", (64, 64)), "x")
    assert str(broken) in str(caught.value)
