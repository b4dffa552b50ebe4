"""Seed recipe export (script, accelerate config, dataset) and following an external run's log."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from studio.dataset.synthetic_pairs import add_synthetic_pairs
from studio.engine.model_folder import ModelFolderError
from studio.engine.npu.env import RECIPE_ENV
from studio.store import Store
from studio.recipe.external_log import follow_log, parse_log
from studio.jobs.launch import TrainOptions
from studio.jobs.presets import TRAIN_PRESETS
from studio.recipe.export import export_recipe


@pytest.fixture
def store(projects):
    store = Store(projects)
    store.create_project("cats")
    add_synthetic_pairs(store, "cats", 4)
    return store


def shard(folder, prefix, parts=2):
    """Split a component's single safetensors file into shards with an index, as released."""
    from safetensors.torch import load_file, save_file

    single = folder / f"{prefix}.safetensors"
    weights = load_file(single)
    single.unlink()
    names = sorted(weights)
    weight_map = {}
    for i in range(parts):
        shard_name = f"{prefix}-{i + 1:05d}-of-{parts:05d}.safetensors"
        keys = names[i::parts]
        save_file({k: weights[k].contiguous() for k in keys}, folder / shard_name)
        weight_map.update({k: shard_name for k in keys})
    (folder / f"{prefix}.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    # A stray file the index does not name must not reach model_paths.
    (folder / f"{prefix}-old.safetensors").write_bytes(b"")
    return sorted(set(weight_map.values()))


@pytest.fixture
def sharded_model(demo_model, tmp_path):
    model = shutil.copytree(demo_model, tmp_path / "model")
    transformer = shard(model / "transformer", "diffusion_pytorch_model", 3)
    text_encoder = shard(model / "text_encoder", "model", 2)
    return model, transformer, text_encoder


def seed_options(**changes) -> TrainOptions:
    return TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS["Reference recipe: 8 Ascend NPUs, ZeRO-2"],
                                   **changes})


def dry_run(script, **env) -> list[str]:
    """The argv the script would run (DRY_RUN prints it NUL-separated)."""
    done = subprocess.run(["bash", str(script)], capture_output=True, check=True,
                          env={**os.environ, "DRY_RUN": "1", **env})
    return done.stdout.decode().split("\0")[:-1]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_export_writes_a_runnable_seed_recipe(store, sharded_model, tmp_path):
    model, transformer, text_encoder = sharded_model
    options = seed_options(lora_rank=16, learning_rate=2e-4, num_epochs=3, dataset_repeat=5,
                           num_machines=2, machine_rank=1, main_ip="10.1.2.3", main_port=6789)
    script = export_recipe(store, "cats", model, tmp_path / "out", options)
    out = script.parent
    assert script.name == "train_qwen_image_edit_lora.sh" and os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)

    argv = dry_run(script, DIFFSYNTH_DIR="/opt/DiffSynth-Studio")
    assert argv[:2] == ["accelerate", "launch"]
    assert flag(argv, "--config_file") == str(out / "accelerate_config.yaml")
    assert flag(argv, "--machine_rank") == "1"  # this node's rank, MACHINE_RANK overrides
    assert "/opt/DiffSynth-Studio/examples/qwen_image/model_training/train.py" in argv
    # model_paths: the shards the indexes name (not the stray file), then the single VAE.
    paths = json.loads(flag(argv, "--model_paths"))
    assert paths == [[f"{model}/transformer/{s}" for s in transformer],
                     [f"{model}/text_encoder/{s}" for s in text_encoder],
                     f"{model}/vae/diffusion_pytorch_model.safetensors"]
    assert len(paths[0]) == 3 and len(paths[1]) == 2
    assert flag(argv, "--tokenizer_path") == f"{model}/tokenizer"
    assert flag(argv, "--dataset_metadata_path") == str(out / "dataset" / "metadata_edit.csv")
    assert flag(argv, "--data_file_keys") == "image,edit_image"
    assert flag(argv, "--extra_inputs") == "edit_image"
    assert (flag(argv, "--lora_rank"), flag(argv, "--num_epochs"), flag(argv, "--dataset_repeat"),
            flag(argv, "--max_pixels")) == ("16", "3", "5", "262144")
    assert float(flag(argv, "--learning_rate")) == 2e-4
    assert flag(argv, "--lora_base_model") == "dit" and "--use_gradient_checkpointing" in argv
    assert flag(argv, "--lora_target_modules").split(",")[-1] == "txt_mod.1"

    # Moving the model on the cluster: MODEL_DIR rewrites every path.
    moved = json.loads(flag(dry_run(script, MODEL_DIR="/data/qie", MACHINE_RANK="0"), "--model_paths"))
    assert moved[0][0] == f"/data/qie/transformer/{transformer[0]}"

    # Ascend environment: every seed variable is exported with its value.
    exports = dict(shlex.split(line)[1].split("=", 1) for line in script.read_text().splitlines()
                   if line.startswith("export "))
    assert {k: exports.get(k) for k in RECIPE_ENV} == RECIPE_ENV
    assert "set_env.sh" in script.read_text()

    config = yaml.safe_load((out / "accelerate_config.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == 2
    assert (config["num_machines"], config["machine_rank"], config["num_processes"]) == (2, 1, 16)
    assert (config["main_process_ip"], config["main_process_port"]) == ("10.1.2.3", 6789)
    assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    assert config["mixed_precision"] == "bf16"

    table = pd.read_csv(out / "dataset" / "metadata_edit.csv")
    assert list(table.columns) == ["image", "edit_image", "prompt", "sample_id"]
    assert len(table) == 3  # the fourth sample pair is held out for validation
    assert table["image"].str.startswith("images/edited_").all()  # the target, as DiffSynth reads it
    assert all((out / "dataset" / p).is_file() for p in [*table["image"], *table["edit_image"]])
    assert "MACHINE_RANK" in (out / "README.txt").read_text()


def test_single_node_script_refuses_missing_weights_before_launching(store, demo_model, tmp_path):
    script = export_recipe(store, "cats", demo_model, tmp_path / "out", seed_options())
    config = yaml.safe_load((script.parent / "accelerate_config.yaml").read_text())
    assert config["num_machines"] == 1 and "main_process_ip" not in config
    assert "--machine_rank" not in dry_run(script)
    paths = json.loads(flag(dry_run(script), "--model_paths"))
    assert paths[0] == f"{demo_model}/transformer/diffusion_pytorch_model.safetensors"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={**os.environ, "MODEL_DIR": str(tmp_path / "nowhere")})
    assert done.returncode == 2 and "missing weight file" in done.stderr
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={**os.environ, "MODEL_DIR": '/data/a"b'})
    assert done.returncode == 2 and "must not contain quotes" in done.stderr


def test_incomplete_model_folder_and_bad_output_are_refused(store, demo_model, tmp_path):
    broken = shutil.copytree(demo_model, tmp_path / "broken")
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelFolderError, match="vae: missing folder"):
        export_recipe(store, "cats", broken, tmp_path / "a", seed_options())
    assert not (tmp_path / "a").exists()  # nothing written
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        export_recipe(store, "cats", demo_model, tmp_path / "b", seed_options())
    with pytest.raises(ValueError, match="one process"):  # 8 per node cannot be "single"
        export_recipe(store, "cats", demo_model, tmp_path / "c", seed_options(mode="single"))


def test_cli_seed_export(store, demo_model, projects, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "studio", "--projects-dir", str(projects),
                           "seed-export", "--project", "cats", "--model", str(demo_model),
                           "--out", str(out), "--nodes", "2", "--node-rank", "0",
                           "--main-ip", "192.168.0.9", "--lora-rank", "8"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train_qwen_image_edit_lora.sh" in done.stdout
    config = yaml.safe_load((out / "accelerate_config.yaml").read_text())
    assert config["main_process_ip"] == "192.168.0.9" and config["num_processes"] == 16
    assert flag(dry_run(out / "train_qwen_image_edit_lora.sh"), "--lora_rank") == "8"


BAR = "{pct:3d}%|{bar}| {n}/{total} [{elapsed}<{eta}, {rate}{post}]"


def tqdm_line(n, total, rate="2.06s/it", loss=None, elapsed="01:02", eta="33:20"):
    post = f", loss={loss}" if loss is not None else ""
    return "\r" + BAR.format(pct=100 * n // total, bar="#" * (10 * n // total), n=n, total=total,
                             elapsed=elapsed, eta=eta, rate=rate, post=post)


def test_follow_log_reads_tqdm_updates(tmp_path):
    log = tmp_path / "train.log"
    text = ("Loading models from: /m/transformer\n"
            "Loading checkpoint shards: 100%|##########| 4/4 [00:03<00:00,  1.20it/s]\n"
            "\r  0%|          | 0/1000 [00:00<?, ?it/s]"
            + tqdm_line(1, 1000, loss=0.5) + tqdm_line(2, 1000, loss=0.25)
            + tqdm_line(30, 1000, "2.06s/it", 0.0723, "01:02", "33:20")
            + "\r  3%|▎         | 31/1000 [01:04<33:1")  # still being written
    log.write_text(text)
    state = follow_log(log)
    assert (state["step"], state["total"], state["epoch"]) == (31, 1000, 1)
    assert state["loss"] == pytest.approx(0.0723)  # the half-written line has no loss yet
    assert state["s_per_it"] == pytest.approx(2.06) and state["it_per_s"] == pytest.approx(1 / 2.06)
    assert state["eta"] == "33:20" and state["eta_s"] == 2000
    assert state["losses"] == [(1, 0.5), (2, 0.25), (30, pytest.approx(0.0723))]

    log.write_text(text + "4:00, 12.5it/s, loss=0.0600]")  # the line completes
    state = follow_log(log)
    assert state["it_per_s"] == pytest.approx(12.5) and state["loss"] == pytest.approx(0.06)
    assert state["eta"] == "33:14:00" and state["eta_s"] == 33 * 3600 + 14 * 60


def test_follow_log_averages_ranks_and_counts_epochs():
    # Two ranks draw their own bars; epoch 2 starts while rank 1 still prints 4/4 of epoch 1.
    text = (tqdm_line(0, 4, "?it/s") + tqdm_line(0, 4, "?it/s")
            + tqdm_line(1, 4, loss=1.0) + tqdm_line(1, 4, loss=3.0)
            + tqdm_line(4, 4, "1.5it/s", 0.4) + "\n" + tqdm_line(0, 4, "?it/s")
            + tqdm_line(4, 4, "1.5it/s", 0.6) + "\n" + tqdm_line(0, 4, "?it/s")
            + tqdm_line(2, 4, "3.0it/s", 0.2))
    state = parse_log(text)
    assert state["epoch"] == 2 and state["step"] == 2 and state["global_step"] == 6
    assert state["losses"] == [(1, 2.0), (4, pytest.approx(0.5)), (6, 0.2)]
    assert state["it_per_s"] == 3.0
    assert parse_log("no progress here\n")["total"] is None


def test_follow_log_cli(tmp_path):
    log = tmp_path / "t.log"
    log.write_text(tqdm_line(30, 1000, loss=0.0723))
    run = lambda *a: subprocess.run([sys.executable, "-m", "studio", "follow-log", str(log), *a],  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout
    assert "step 30/1000" in run() and "loss 0.0723" in run()
    assert json.loads(run("--json"))["losses"] == [[30, 0.0723]]
    missing = subprocess.run([sys.executable, "-m", "studio", "follow-log", str(tmp_path / "x")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_train_tab_exports_and_follows_through_the_app(store, demo_model, tmp_path):
    import gradio as gr
    from gradio_client import Client

    from studio.jobs.manager import JobManager
    from studio.ui import train_form, train_tab

    with gr.Blocks() as app:
        project = gr.Dropdown(["cats"], value="cats")
        train_tab.build(store, JobManager(store), project, str(demo_model))
    app.queue()
    _, url, _ = app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True,
                           show_error=True)
    try:
        client = Client(url, verbose=False)
        form = train_form.preset_values("Reference recipe: 8 Ascend NPUs, ZeRO-2")
        note = client.predict("cats", "first", str(demo_model), "HCCL_EXEC_TIMEOUT=3600", *form,
                              api_name="/train_seed_export")
        out = store.project_dir("cats") / "exports" / "first"
        assert str(out) in note and "MACHINE_RANK" in note
        script = out / "train_qwen_image_edit_lora.sh"
        assert flag(dry_run(script), "--max_pixels") == "262144"  # the form's preset value
        assert "export HCCL_EXEC_TIMEOUT=3600" in script.read_text()  # the form's environment
        with pytest.raises(Exception, match="not empty"):
            client.predict("cats", "first", str(demo_model), "", *form, api_name="/train_seed_export")

        log = tmp_path / "run.log"
        log.write_text(tqdm_line(1, 50, loss=0.3) + tqdm_line(7, 50, "1.25it/s", 0.125))
        text, plot, timer = client.predict(str(log), api_name="/train_follow_log")
        assert timer["active"] is True  # the panel keeps re-reading the log from now on
        assert "step **7/50**" in text and "loss **0.1250**" in text and "1.25 it/s" in text
        column = plot["columns"].index("loss")
        assert [row[column] for row in plot["data"]] == [0.3, 0.125]

        with log.open("a") as f:
            f.write(tqdm_line(9, 50, "1.25it/s", 0.0625))
        text, plot, timer = client.predict(str(log), api_name="/train_follow_refresh")
        assert "step **9/50**" in text and len(plot["data"]) == 3 and timer["active"] is True
        log.unlink()  # the run's folder went away: the panel says so and stops re-reading
        text, _, timer = client.predict(str(log), api_name="/train_follow_refresh")
        assert text.startswith("Stopped following") and timer["active"] is False
    finally:
        app.close()
