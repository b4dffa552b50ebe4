"""Adapters on the live pipeline, the encode cache, and comparison grids (demo model)."""
import json

import numpy as np
import pytest
import torch

from studio.cli import main
from studio.engine.adapters import AdapterRef, split_strength
from studio.engine.compare import compare, plan_columns
from studio.store import Store
from tests.conftest import make_image
from tests.lora_files import random_lora, save_lora

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

PROMPT = "add a red hat"
KW = dict(steps=2, size=(32, 32), true_cfg_scale=1.0)


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def loras(demo_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    a, b = random_lora(demo_model, seed=1), random_lora(demo_model, seed=2)
    return {"a": save_lora(a, folder / "a.safetensors"),
            "a_diffsynth": save_lora(a, folder / "a_diffsynth.safetensors", "diffsynth"),
            "a_comfyui": save_lora(a, folder / "a_comfyui.safetensors", "comfyui"),
            "b": save_lora(b, folder / "b.safetensors")}


def test_adapter_edit_matches_plain_diffusers_load_lora_weights(demo_model, demo_editor, loras):
    from diffusers import QwenImageEditPipeline

    image = make_image()
    ours = demo_editor.edit(image, PROMPT, seed=4, adapters=[AdapterRef(loras["a"])], **KW)
    plain = QwenImageEditPipeline.from_pretrained(demo_model, dtype=torch.float32)
    plain.set_progress_bar_config(disable=True)
    plain.load_lora_weights(str(loras["a"]))
    theirs = plain(image=image, prompt=PROMPT, true_cfg_scale=1.0, num_inference_steps=2,
                   height=32, width=32, generator=torch.Generator("cpu").manual_seed(4)).images[0]
    assert np.array_equal(pixels(ours.image), pixels(theirs))


def test_an_alpha_other_than_rank_scales_the_edit_like_b_times_alpha_over_rank(demo_model, demo_editor,
                                                                           tmp_path):
    """A file with `.alpha` keys (alpha 8, rank 4) is the same LoRA as one with lora_B doubled
    and no alpha, folded here by hand; the unscaled file (alpha taken as rank) is a different
    edit, so a loader that dropped or misapplied the scale would fail."""
    from safetensors.torch import save_file

    weights = random_lora(demo_model, rank=4, seed=3, scale=0.3)
    with_alpha = {f"diffusion_model.{k}.weight": v for k, v in weights.items()}
    with_alpha.update({f"diffusion_model.{k[: -len('.lora_A')]}.alpha": torch.tensor(8.0)
                       for k in weights if k.endswith(".lora_A")})
    save_file(with_alpha, str(tmp_path / "alpha8.safetensors"))
    folded = {k: v * 2 if k.endswith(".lora_B") else v for k, v in weights.items()}
    paths = {"alpha8": tmp_path / "alpha8.safetensors",
             "folded": save_lora(folded, tmp_path / "folded.safetensors", "comfyui"),
             "unscaled": save_lora(weights, tmp_path / "unscaled.safetensors", "comfyui")}
    image = make_image()
    out = {k: pixels(demo_editor.edit(image, PROMPT, seed=6, adapters=[AdapterRef(p)], **KW).image)
           for k, p in paths.items()}
    assert np.array_equal(out["alpha8"], out["folded"])  # x2 on A or on B: exact in floats
    difference = np.abs(out["alpha8"] - out["unscaled"])
    assert difference.mean() > 1 and difference.max() > 20  # measured: 3.9 and 41 levels


def test_switching_adapters_needs_no_reload_and_returns_to_the_same_output(demo_editor, loras):
    image = make_image()
    edit = lambda adapters: pixels(demo_editor.edit(image, PROMPT, seed=1, adapters=adapters, **KW).image)  # noqa: E731
    base = edit([])
    a = edit([AdapterRef(loras["a"])])
    loads = demo_editor.adapters.load_count
    b = edit([AdapterRef(loras["b"])])
    a_again = edit([AdapterRef(loras["a"])])
    base_again = edit([])
    assert not np.array_equal(a, base) and not np.array_equal(a, b)
    assert np.array_equal(a, a_again) and np.array_equal(base, base_again)
    assert demo_editor.adapters.load_count <= loads + 1  # only b was new
    half = edit([AdapterRef(loras["a"], 0.5)])
    stacked = edit([AdapterRef(loras["a"]), AdapterRef(loras["b"])])
    assert not np.array_equal(half, a) and not np.array_equal(stacked, a)


def test_diffsynth_and_comfyui_files_give_the_same_edit_as_diffusers_keys(demo_editor, loras):
    image = make_image()
    outs = [pixels(demo_editor.edit(image, PROMPT, seed=2, adapters=[AdapterRef(loras[k])], **KW).image)
            for k in ("a", "a_diffsynth", "a_comfyui")]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_loaded_adapters_are_limited(demo_model, loras):
    from studio.engine.editor import Editor

    editor = Editor(demo_model, device="cpu", max_adapters=1)
    for key in ("a", "b", "a"):
        editor.edit(make_image(), PROMPT, adapters=[AdapterRef(loras[key])], **KW)
    assert len(editor.adapters.loaded) == 1
    assert editor.adapters.load_count == 3


def test_the_cached_encoding_gives_identical_output(demo_editor):
    image = make_image(seed=3)
    demo_editor.encoding_memo.clear()
    hits = demo_editor.encoding_memo.hits
    first = pixels(demo_editor.edit(image, PROMPT, seed=9, **KW).image)
    second = pixels(demo_editor.edit(image, PROMPT, seed=9, **KW).image)
    assert demo_editor.encoding_memo.hits >= hits + 2  # prompt embedding and VAE latents reused
    demo_editor.encoding_memo.clear()
    fresh = pixels(demo_editor.edit(image, PROMPT, seed=9, **KW).image)
    assert np.array_equal(first, second) and np.array_equal(first, fresh)


def test_strength_parsing():
    assert split_strength("7:0.5") == ("7", 0.5)
    assert split_strength("C:/loras/x.safetensors") == ("C:/loras/x.safetensors", 1.0)
    with pytest.raises(ValueError, match="between 0 and 2"):
        split_strength("x.safetensors:3")


def test_grid_layout_labels_and_cells(demo_editor, loras):
    image, target = make_image(), make_image(seed=5)
    columns = plan_columns([None, AdapterRef(loras["a"], label="A")], strengths=[0.5, 1.0])
    assert [c.label for c in columns] == ["base", "A @ 0.5", "A @ 1"]
    result = compare(demo_editor, [image], PROMPT, columns, seeds=[0, 1], target=target, **KW)
    assert len(result.cells) == 2 and all(len(row) == 3 for row in result.cells)
    # Each cell is the same edit as a single run with that column's adapters and row's seed.
    single = demo_editor.edit(image, PROMPT, seed=1, adapters=[AdapterRef(loras["a"], 0.5)], **KW)
    assert np.array_equal(pixels(result.cells[1][1]), pixels(single.image))
    crop = result.grid.crop(result.boxes[1][1])
    assert np.array_equal(pixels(crop), pixels(single.image))
    # Input and target columns come first, then one column per adapter x strength.
    assert result.grid.width > 5 * 32 and result.grid.height > 2 * 32
    assert [c["label"] for c in result.params["columns"]] == ["base", "A @ 0.5", "A @ 1"]
    assert result.params["seeds"] == [0, 1]


def test_edit_and_compare_cli_with_adapters_and_history(demo_model, loras, tmp_path, projects, capsys):
    make_image().save(tmp_path / "in.png")
    assert main(["project", "create", "p"]) == 0
    assert main(["adapters", "add", "--project", "p", "--name", "mine", str(loras["a"])]) == 0
    store = Store(projects)
    (row,) = store.list_adapters("p")
    common = ["--model", str(demo_model), "--image", str(tmp_path / "in.png"), "--prompt", PROMPT,
              "--steps", "2", "--cfg", "1", "--size", "32x32"]
    assert main(["edit", *common, "--adapter", f"{row['id']}:1.0", "--out", str(tmp_path / "e.png")]) == 0
    assert main(["compare", *common, "--adapters", f"base,{row['id']},{loras['b']}:0.5",
                 "--seeds", "0,1", "--out", str(tmp_path / "grid.png")]) == 0
    params = json.loads((tmp_path / "grid.json").read_text())
    assert [c["label"] for c in params["columns"]] == ["base", "mine @ 1", "b @ 0.5"]
    assert main(["edit", *common, "--adapter", "99", "--out", str(tmp_path / "x.png")]) == 2
    assert "no adapter with id 99" in capsys.readouterr().err
    # History: a comparison is kept with its parameters.
    saved = store.save_edit("p", [make_image()], make_image(), params, 1.0, kind="compare")
    got = store.get_edit(saved["id"])
    assert got["kind"] == "compare" and json.loads(got["params"])["seeds"] == [0, 1]


def test_compare_cli_takes_every_checkpoint_of_a_run(demo_model, loras, tmp_path, projects, capsys):
    make_image().save(tmp_path / "in.png")
    store = Store(projects)
    store.create_project("p")
    run = store.runs.create("p", "r", "", {}, "cpu")
    store.add_adapter("p", "r step 20", loras["b"], run_id=run["id"], step=20)
    store.add_adapter("p", "r step 10", loras["a"], run_id=run["id"], step=10)
    store.add_adapter("p", "unrelated", loras["a"])
    common = ["--model", str(demo_model), "--image", str(tmp_path / "in.png"), "--prompt", PROMPT,
              "--steps", "2", "--cfg", "1", "--size", "32x32", "--out", str(tmp_path / "grid.png")]
    assert main(["compare", *common, "--adapters", f"base,run:{run['id']}"]) == 0
    params = json.loads((tmp_path / "grid.json").read_text())
    assert [c["label"] for c in params["columns"]] == ["base", "r step 10 @ 1", "r step 20 @ 1"]
    assert main(["compare", *common, "--adapters", "run:999"]) == 2
    assert "no run with id 999" in capsys.readouterr().err
