"""LoRA tools (engine/lora_tools.py, lora_fuse.py, jobs/adapter_tools.py) on the demo model:
merge, convert, fuse and average give the edits they promise, and bad inputs create nothing.

"Same edit" is judged on the editor's output pixels (0-255) with a tolerance of 1 level, and
each test also shows that the LoRA moves the edit by far more than that, so a tool that lost
or mangled the LoRA would fail."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from studio.engine.adapters import AdapterRef
from studio.engine.lora_files import LAYOUTS, load_lora
from studio.engine import lora_tools
from studio.jobs import adapter_tools
from studio.store import Store
from tests.conftest import make_image
from tests.lora_files import random_lora, save_lora

PROMPT = "add a red hat"
KW = dict(steps=2, size=(32, 32), true_cfg_scale=1.0)
TOLERANCE = 1  # pixel levels: float summation order differs between the two ways


def pixels(editor, adapters, seed=3):
    return np.asarray(editor.edit(make_image(), PROMPT, seed=seed, adapters=adapters, **KW).image,
                      dtype=np.int16)


def delta(path, module):
    a, b = load_lora(path).pair(module)
    return b.double() @ a.double()


@pytest.fixture(scope="module")
def loras(demo_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {"a": save_lora(random_lora(demo_model, rank=4, seed=1), folder / "a.safetensors"),
            "b": save_lora(random_lora(demo_model, rank=8, seed=2), folder / "b.safetensors", "diffsynth"),
            "folder": folder}


@pytest.fixture(scope="module")
def edit_with_a(demo_editor, loras):
    """The edit with LoRA a at 1.0, which several tests compare against (made once)."""
    return pixels(demo_editor, [AdapterRef(loras["a"])])


@pytest.fixture
def store(projects, demo_model, loras):
    store = Store(projects)
    store.create_project("p")
    store.add_adapter("p", "a", loras["a"])
    store.add_adapter("p", "b", loras["b"])
    return store


def test_merge_at_strengths_gives_the_edit_of_stacking_them(demo_model, demo_editor, loras, tmp_path):
    merged = lora_tools.merge([(loras["a"], 1.0), (loras["b"], 0.5)], tmp_path / "ab.safetensors",
                              demo_model)
    assert merged.rank == "12" and merged.error is None  # ranks 4 + 8 concatenated
    module = "transformer_blocks.1.attn.to_q"
    expected = delta(loras["a"], module) + 0.5 * delta(loras["b"], module)  # computed apart
    assert torch.allclose(delta(merged.path, module), expected, atol=1e-5)

    stacked = pixels(demo_editor, [AdapterRef(loras["a"], 1.0), AdapterRef(loras["b"], 0.5)])
    one_file = pixels(demo_editor, [AdapterRef(merged.path)])
    base = pixels(demo_editor, [])
    assert np.abs(stacked - one_file).max() <= TOLERANCE
    assert np.abs(stacked - base).max() > 20 * TOLERANCE


def test_svd_merge_reports_the_frobenius_error_of_the_best_rank_r_delta(demo_model, loras, tmp_path):
    inputs = [(loras["a"], 1.0), (loras["b"], -0.7)]
    result = lora_tools.merge(inputs, tmp_path / "r3.safetensors", demo_model, rank=3)
    state = load_lora(result.path)
    assert state.ranks() == {3}
    dropped = total = 0.0
    for module in state.modules:
        full = delta(loras["a"], module) - 0.7 * delta(loras["b"], module)
        s = torch.linalg.svdvals(full)  # Eckart-Young: the best rank-3 error is the tail
        dropped, total = dropped + float((s[3:] ** 2).sum()), total + float((s ** 2).sum())
        approx = delta(result.path, module)
        assert torch.allclose(torch.linalg.norm(full - approx) ** 2, (s[3:] ** 2).sum(), rtol=1e-4)
    assert result.error == pytest.approx((dropped / total) ** 0.5, rel=1e-4)
    assert 0.1 < result.error < 1  # random rank-12 deltas: rank 3 loses a real share
    exact = lora_tools.merge(inputs, tmp_path / "r12.safetensors", demo_model, rank=12)
    assert exact.error == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_converted_file_gives_the_same_edit_and_reports_what_did_not_map(demo_model, demo_editor,
                                                                           edit_with_a, tmp_path, layout):
    weights = {f"diffusion_model.{k}.weight": v for k, v in random_lora(demo_model, seed=1).items()}
    extra = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
             "diffusion_model.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(4, 64),
             "diffusion_model.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(64, 4)}
    save_file({**weights, **extra}, str(tmp_path / "in.safetensors"))
    result = lora_tools.convert(tmp_path / "in.safetensors", tmp_path / "out.safetensors", layout,
                                demo_model)
    assert len(result.unmapped) == 2  # the text-encoder key, and block 7 (the demo has 2 blocks)
    assert any("lora_te_" in k for k in result.unmapped)
    assert any("transformer_blocks.7" in k for k in result.unmapped)
    with safe_open(str(result.path), "pt") as f:
        keys = list(f.keys())
    prefix, suffix = LAYOUTS[layout]
    assert keys and all(k.startswith(prefix) and k.endswith(suffix.format(k.split(".lora_")[1][0]))
                        for k in keys)
    assert not any("blocks.7" in k or "lora_te" in k for k in keys)
    assert np.abs(edit_with_a - pixels(demo_editor, [AdapterRef(result.path)])).max() <= TOLERANCE


@pytest.mark.slow  # loads a second pipeline (about 40 s on a shared CPU)
def test_a_fused_model_folder_gives_the_edit_of_base_plus_lora(demo_model, demo_editor, loras, tmp_path):
    from diffusers import QwenImageEditPipeline

    from studio.engine.editor import Editor
    from studio.engine.lora_fuse import FUSED_RECORD, fuse

    folder = fuse(demo_model, loras["a"], tmp_path / "fused", strength=0.7)
    assert json.loads((folder / FUSED_RECORD).read_text())["strength"] == 0.7
    fused = pixels(Editor(folder, device="cpu"), [])
    with_lora = pixels(demo_editor, [AdapterRef(loras["a"], 0.7)])
    assert np.abs(fused - with_lora).max() <= TOLERANCE
    assert np.abs(fused - pixels(demo_editor, [])).max() > 20 * TOLERANCE
    plain = QwenImageEditPipeline.from_pretrained(folder, dtype=torch.float32)  # plain diffusers
    assert not any("lora" in name for name, _ in plain.transformer.named_parameters())
    with pytest.raises(ValueError, match="already exists"):
        fuse(demo_model, loras["a"], folder)


def test_averaging_identical_checkpoints_returns_that_checkpoint_and_ema_weights_are_the_recursion(
        demo_model, loras, tmp_path):
    result = lora_tools.average([loras["a"], loras["a"]], tmp_path / "avg.safetensors", demo_model)
    original, averaged = load_lora(loras["a"]).weights, load_lora(result.path).weights
    assert original.keys() == averaged.keys()
    assert all(torch.equal(original[k], averaged[k]) for k in original)

    files = [save_lora(random_lora(demo_model, seed=s), tmp_path / f"c{s}.safetensors") for s in (5, 6, 7)]
    ema = lora_tools.average(files, tmp_path / "ema.safetensors", demo_model, ema=0.8)
    key = "transformer_blocks.0.attn.to_k.lora_B.weight"
    running = load_lora(files[0]).weights[key].double()
    for f in files[1:]:  # e = 0.8 e + 0.2 x, oldest first
        running = 0.8 * running + 0.2 * load_lora(f).weights[key].double()
    assert torch.allclose(load_lora(ema.path).weights[key].double(), running, atol=1e-6)
    assert ema.weights == pytest.approx([0.64, 0.16, 0.2])


def test_inspect_tells_rank_alpha_targets_layers_layout_and_base_model(demo_model, store, loras):
    made = adapter_tools.merge(store, "p", ["1", "2:0.5"], "ab", str(demo_model))
    facts = adapter_tools.inspect(store, str(made.adapter["id"]))
    assert (facts["layout"], facts["rank"], facts["blocks"], facts["modules"]) == ("comfyui", "12", "0-1", 20)
    assert "attn.to_q" in facts["targets"] and "img_mlp.net.2" in facts["targets"]
    assert facts["base_model"] == demo_model.name
    origin = facts["adapter"]["origin"]
    assert origin["op"] == "merge" and [(p["id"], p["strength"]) for p in origin["parents"]] == [(1, 1.0), (2, 0.5)]
    assert adapter_tools.inspect(store, "2")["layout"] == "diffsynth"
    assert adapter_tools.inspect(store, "2")["rank"] == "8"


def inner(model_dir) -> int:
    config = json.loads((model_dir / "transformer" / "config.json").read_text())
    return config["num_attention_heads"] * config["attention_head_dim"]


def lora_file(path, weights):
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    return path


def test_bad_files_get_a_clear_message_and_create_nothing(demo_model, store, loras, tmp_path):
    a = random_lora(demo_model, rank=4, seed=1)
    (tmp_path / "notes.txt").write_text("not a tensor file")
    not_lora = lora_file(tmp_path / "model.safetensors", {"transformer_blocks.0.attn.to_q.weight": torch.zeros(2, 2)})
    wide = lora_file(tmp_path / "wide.safetensors", {  # a LoRA for a wider model (another base)
        **{f"transformer.{k}.weight": v for k, v in a.items()},
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 2 * inner(demo_model))})
    other = lora_file(tmp_path / "other.safetensors", {"transformer.unet.down.0.lora_A.weight": torch.zeros(4, 8),
                                                       "transformer.unet.down.0.lora_B.weight": torch.zeros(8, 4)})
    torn = {f"transformer.{k}.weight": v for k, v in a.items()}
    torn["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"] = torch.zeros(64, 3)
    torn = lora_file(tmp_path / "torn.safetensors", torn)
    rank8 = save_lora(random_lora(demo_model, rank=8, seed=4), tmp_path / "r8.safetensors")
    cases = [
        (lambda: adapter_tools.merge(store, "p", ["1", str(tmp_path / "notes.txt")], "x", str(demo_model)),
         "not a safetensors file"),
        (lambda: adapter_tools.merge(store, "p", ["1", str(not_lora)], "x", str(demo_model)), "not a LoRA"),
        (lambda: adapter_tools.convert(store, "p", str(other), "comfyui", "x", str(demo_model)),
         "not a LoRA for this base model"),
        (lambda: adapter_tools.merge(store, "p", ["1", str(wide)], "x", str(demo_model)), "another base model"),
        (lambda: adapter_tools.merge(store, "p", ["1", str(torn)], "x", str(demo_model)), "mismatched ranks"),
        (lambda: adapter_tools.average(store, "p", "x", specs=["1", str(rank8)], model=str(demo_model)),
         "mismatched ranks"),
        (lambda: adapter_tools.fuse(store, str(wide), "x", str(demo_model)), "another base model"),
    ]
    before = store.list_adapters("p")
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert store.list_adapters("p") == before
    assert not (store.project_dir("p") / adapter_tools.ADAPTERS_DIR).exists()
    assert not (store.root / adapter_tools.FUSED_DIR / "x").exists()


def test_cli_merges_and_lists_the_origin(demo_model, store, capsys):
    from studio.cli import main

    root = ["--projects-dir", str(store.root)]
    assert main([*root, "adapters", "merge", "1", "2:0.5", "--project", "p", "--name", "ab",
                 "--rank", "6", "--model", str(demo_model)]) == 0
    out = capsys.readouterr().out
    assert "rank 6" in out and "approximation error" in out
    assert main([*root, "adapters", "list", "--project", "p"]) == 0
    assert "merge of a, b" in capsys.readouterr().out
    assert main([*root, "adapters", "merge", "1", "--project", "p", "--name", "one",
                 "--model", str(demo_model)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main([*root, "adapters", "inspect", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"]["origin"]["rank"] == 6
    assert main([*root, "adapters", "fuse", "1:0.5", "--name", "a-half", "--model", str(demo_model)]) == 0
    assert "--model " + str(store.root / adapter_tools.FUSED_DIR / "a-half") in capsys.readouterr().out
    assert (store.root / adapter_tools.FUSED_DIR / "a-half" / "transformer" / "config.json").is_file()


def test_adapters_tab_handlers_merge_and_refuse_with_the_reason(demo_model, store):
    import gradio as gr

    from studio.ui import adapters_tab

    note = adapters_tab.on_merge(store, str(demo_model), "p", ["1", "2"], "1, 0.5", 0, "ab")
    assert "rank 12" in note
    row = store.list_adapters("p")[-1]
    assert row["name"] == "ab" and json.loads(row["origin"])["parents"][1]["strength"] == 0.5
    adapters, _ = adapters_tab.choices(store, "p")
    assert str(row["id"]) in [value for _, value in adapters]
    with pytest.raises(gr.Error, match="3 strengths"):
        adapters_tab.on_merge(store, str(demo_model), "p", ["1", "2"], "1, 0.5, 2", 0, "x")
    with pytest.raises(gr.Error, match="already exists"):
        adapters_tab.on_convert(store, str(demo_model), "p", "1", "diffsynth", "ab")


def test_svd_and_averaged_outputs_load_in_plain_diffusers_with_their_delta(demo_model, loras, tmp_path):
    from diffusers import QwenImageEditPipeline

    outputs = [lora_tools.merge([(loras["a"], 1.0), (loras["b"], 0.5)], tmp_path / "svd.safetensors",
                                demo_model, rank=5).path,
               lora_tools.average([loras["a"], loras["a"]], tmp_path / "avg.safetensors", demo_model,
                                  ema=0.5, layout="diffusers").path]
    module = "transformer_blocks.0.img_mlp.net.2"
    for path in outputs:
        pipe = QwenImageEditPipeline.from_pretrained(demo_model, dtype=torch.float32)
        pipe.load_lora_weights(str(path))
        layer = pipe.transformer.get_submodule(module)
        loaded = sum(layer.get_delta_weight(a) for a in layer.active_adapters)
        assert torch.allclose(loaded.double(), delta(path, module), atol=1e-5)
        assert float(delta(path, module).abs().max()) > 0.1  # a real delta, not an empty load


def test_average_takes_a_runs_last_checkpoints_that_still_have_files(demo_model, store, tmp_path):
    run = store.runs.create("p", "r", str(tmp_path / "run"), {}, "cpu")
    files = {step: save_lora(random_lora(demo_model, seed=step), tmp_path / f"step-{step}.safetensors")
             for step in (10, 20, 30, 40)}
    for step, path in files.items():
        store.add_adapter("p", "r", path, run_id=run["id"], step=step)
    files[40].unlink()  # a checkpoint whose file is gone is not averaged
    made = adapter_tools.average(store, "p", "last2", run_id=run["id"], last=2, model=str(demo_model))
    origin = json.loads(made.adapter["origin"])
    assert [p["step"] for p in origin["parents"]] == [20, 30]
    assert [p["strength"] for p in origin["parents"]] == [0.5, 0.5]
    key = "transformer_blocks.1.attn.to_v.lora_A.weight"
    expected = (load_lora(files[20]).weights[key].double() + load_lora(files[30]).weights[key].double()) / 2
    assert torch.allclose(load_lora(made.path).weights[key].double(), expected, atol=1e-6)
