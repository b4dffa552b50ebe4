"""The browser app, started as a user starts it, driven through its HTTP API."""
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from studio.store import Store
from tests.conftest import make_image
from tests.lora_files import random_lora, save_lora
from tests.waiting import wait_for

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast



NO_ADAPTERS = (None, 1.0) * 3


def test_page_says_it_runs_the_random_weight_demo(app_url):
    with urllib.request.urlopen(app_url[0]) as response:
        page = response.read().decode()
    assert "Qwen Image Edit Studio" in page
    assert "random weights" in page and "--model" in page


def test_an_edit_through_the_api_returns_an_image_and_is_kept(app_url, tmp_path):
    make_image(64, 48).save(tmp_path / "in.png")
    client = Client(app_url[0], verbose=False)
    image_path, note, before_after = client.predict(
        "default", handle_file(str(tmp_path / "in.png")), None, None, "make the sky blue", "",
        3, 2, 1.0, 64, 48, *NO_ADAPTERS, api_name="/edit")
    assert Image.open(image_path).size == (64, 48)
    assert "saved to `default` history" in note
    assert len(before_after) == 2


def test_an_edit_without_an_image_is_refused_with_a_message(app_url):
    client = Client(app_url[0], verbose=False)
    with pytest.raises(Exception, match="Upload an input image"):
        client.predict("default", None, None, None, "make the sky blue", "", 0, 2, 1.0, 0, 0,
                       *NO_ADAPTERS, api_name="/edit")


def test_edit_with_an_adapter_and_compare_base_with_it(app_url, demo_model, tmp_path):
    url, projects = app_url
    lora = save_lora(random_lora(demo_model, seed=1), tmp_path / "mine.safetensors")
    adapter = Store(projects).add_adapter("default", "mine", lora, step=10)
    make_image(64, 48).save(tmp_path / "in.png")
    client = Client(url, verbose=False)
    args = ("default", handle_file(str(tmp_path / "in.png")), None, None, "make the sky blue", "",
            3, 2, 1.0, 32, 32)
    base_path, _, _ = client.predict(*args, *NO_ADAPTERS, api_name="/edit")
    lora_path, note, _ = client.predict(*args, str(adapter["id"]), 1.0, None, 1.0, None, 1.0,
                                        api_name="/edit")
    assert "mine @ 1" in note
    assert not np.array_equal(np.asarray(Image.open(base_path)), np.asarray(Image.open(lora_path)))

    grid_path, note, files = client.predict(
        "default", handle_file(str(tmp_path / "in.png")), None, "make the sky blue", "",
        ["base", str(adapter["id"])], "0.5,1", "0,1", "", 2, 1.0, 32, 32, api_name="/compare")
    assert "2 seed(s) × 3 column(s)" in note and "saved to `default` history" in note
    exported = {Path(f).name: f for f in files}
    params = json.loads(Path(exported["comparison.json"]).read_text())
    assert [c["label"] for c in params["columns"]] == ["base", "mine @ 0.5", "mine @ 1"]
    assert Image.open(grid_path).size == Image.open(exported["comparison.png"]).size
    kinds = [row["kind"] for row in Store(projects).list_edits("default")]
    assert "compare" in kinds


def test_train_tab_previews_starts_and_monitors_a_run(app_url, demo_model, capsys):
    from studio.dataset.synthetic_pairs import add_synthetic_pairs
    from studio.ui.train_form import NAMES, preset_values

    url, projects = app_url
    store = Store(projects)
    store.create_project("trainee")
    add_synthetic_pairs(store, "trainee", 4)
    values = dict(zip(NAMES, preset_values("Demo on CPU")))
    assert values["sample_steps"] is None  # empty field: sample at each checkpoint
    values.update(max_steps=4, save_steps=2, sample_inference_steps=3)
    form = [values[name] for name in NAMES]
    client = Client(url, verbose=False)
    preview = client.predict("trainee", str(demo_model), "", *form, api_name="/train_preview")
    assert "accelerate.commands.launch" in preview and "--max_steps 4" in preview
    assert '"distributed_type": "NO"' in preview
    assert "--sample_inference_steps 3" in preview and "--sample_steps" not in preview
    assert "no validation pairs" not in preview  # the sample pairs hold one out
    store.create_project("no-held-out")
    preview = client.predict("no-held-out", str(demo_model), "", *form, api_name="/train_preview")
    assert "no validation pairs" in preview

    run = client.predict("trainee", str(demo_model), "tab-run", "", *form, api_name="/train_start")
    run_id = int(run["value"])  # the run picker, updated to the new run
    steps_seen = set()

    def ended():
        shown = client.predict(run_id, api_name="/train_status")
        steps_seen.add(int(shown[0].split('data-step="')[1].split('"')[0]))
        return ("**finished**" in shown[1] or "**failed**" in shown[1]) and shown

    bar, status, curve, val_curve, log, gallery, files = wait_for(ended, 240, "the run to end",
                                                                  interval=1)
    assert "**finished**" in status, status
    assert "step 4/4" in status and "loss" in status and "peak memory" in status
    # The sample pairs hold one out: its loss before training and at both checkpoints.
    assert "validation loss" in status and "at step 4" in status
    assert [row[val_curve["columns"].index("step")] for row in val_curve["data"]] == [0, 2, 4]
    assert max(steps_seen) == 4
    series = curve["columns"].index("series")
    assert sorted(row[series] for row in curve["data"]) == ["per step"] * 4 + ["smoothed"] * 4
    assert "done: 4 steps" in log
    # The held-out pair's sample edit at the last checkpoint: source | target | output.
    captions = [item["caption"] for item in gallery]
    assert [c.split(" · ")[:2] for c in captions] == [["source", "step 4"], ["target", "step 4"],
                                                     ["output", "step 4"]], captions
    steps = sorted(a["step"] for a in store.list_adapters("trainee"))
    assert steps == [2, 4]
    # Each LoRA file can be downloaded from the browser.
    assert sorted(Path(f).name for f in files) == ["final.safetensors", "step-000002.safetensors",
                                                   "step-000004.safetensors"]

    # Compare can take every checkpoint of the run as its columns, in step order.
    columns = client.predict("trainee", run_id, api_name="/compare_whole_run")
    by_step = sorted(store.list_adapters("trainee"), key=lambda a: a["step"])
    assert columns["value"] == ["base", *(str(a["id"]) for a in by_step)]

    # The scoreboard: one row per checkpoint (and step 0's validation loss), the held-out
    # pair's edit scored at each; the best by a metric and its neighbours go to Compare.
    summary, table, plot = client.predict(run_id, "psnr", api_name="/train_scoreboard")
    assert "Best checkpoint by it: **step" in summary
    assert "3 steps, true CFG 1.0" in summary and "cheap previews" in summary  # the demo card: 4, CFG 4
    assert [row[table["headers"].index("step")] for row in table["data"]] == [0, 2, 4]
    psnr = table["headers"].index("PSNR (dB)")
    assert table["data"][0][psnr] == "–" and all("worst:" in r[psnr] for r in table["data"][1:])
    assert [row[0] for row in plot["data"]] == [2, 4]
    best_row = next(r for r in table["data"] if r[0] == "★")
    columns = client.predict(run_id, "psnr", api_name="/train_use_in_compare")
    assert columns["value"][0] == "base" and str(by_step[[a["step"] for a in by_step].index(
        best_row[1])]["id"]) in columns["value"]
    assert len(columns["value"]) == 3  # base, the best and its one neighbour
    from studio.cli import main as cli_main

    assert cli_main(["--projects-dir", str(projects), "runs", "show", str(run_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in shown["scoreboard"]] == [0, 2, 4]
    assert shown["best"]["psnr"] == best_row[1]
    assert [r["pairs"] for r in shown["scoreboard"]] == [0, 1, 1]
    assert cli_main(["--projects-dir", str(projects), "runs", "show", str(run_id)]) == 0
    text = capsys.readouterr().out
    assert "scoreboard:" in text and "psnr" in text and "worst pair at step 4" in text

    # Its settings come back into the form, e.g. to start a variant of it.
    preset, model, env_text, *form_back = client.predict(run_id, api_name="/train_reuse")
    assert (preset, model) == ("Custom", str(demo_model))
    assert dict(zip(NAMES, form_back))["max_steps"] == 4

    # The next run can start from one of them, picked by id as the dropdown gives it.
    last = max(store.list_adapters("trainee"), key=lambda a: a["step"])
    values["lora_checkpoint"] = str(last["id"])
    preview = client.predict("trainee", str(demo_model), "", *[values[n] for n in NAMES],
                             api_name="/train_preview")
    assert f"--lora_checkpoint {last['path']}" in preview
