"""What a run would be before it is queued (studio/jobs/planning.py), and a run's results
(studio/jobs/results.py): read from the model folder, the run folder and the store alone,
with no job manager, nothing started and nothing recorded."""
import pytest

from studio.jobs import planning, results
from studio.jobs.presets import DEMO, PRESET_CARD_GB, TRAIN_PRESETS, preset_options
from studio.store import NotFoundError, Store
from tests.dataset_helpers import store  # noqa: F401 (a store with project 'p')




def test_a_relative_model_path_is_made_absolute_and_nothing_means_the_demo(store, demo_model,
                                                                            monkeypatch):
    monkeypatch.chdir(demo_model.parent)
    assert planning.model_folder(store, f"./{demo_model.name}") == demo_model.resolve()
    demo = planning.model_folder(store, "")
    assert demo == planning.model_folder(store, "demo") and (demo / "model_index.json").is_file()


def test_the_launch_preview_memory_plan_and_sampler_defaults_of_the_demo(store, demo_model):
    opts = preset_options(DEMO, model=str(demo_model), max_steps=4)
    preview = planning.launch_preview(store, opts)
    assert "studio.trainer" in preview["command"] and "--max_steps" in preview["command"]
    assert "--max_steps 4" in preview["shell"] and preview["accelerate_config"]
    planned = planning.memory_plan(store, opts)
    assert planned.text().startswith("memory plan: ") and planned.verdict.fits  # a CPU run: here
    assert planning.sampler_defaults(store, str(demo_model)) == {"steps": 4, "true_cfg_scale": 4.0}
    assert not store.runs.list("p")  # planned, not queued


def test_every_preset_is_planned_on_the_real_model_s_shapes_for_the_demo(store):
    planned, rows = planning.preset_plans(store, "demo")
    assert "shapes" in planned and [r["preset"] for r in rows] == list(TRAIN_PRESETS)
    carded = [r for r in rows if r["preset"] in PRESET_CARD_GB]
    assert all(r["card"].endswith("GB") and r["verdict"] != "(host RAM)" for r in carded)


def test_a_start_lora_that_is_no_adapter_is_refused_by_name(store, demo_model):
    opts = preset_options(DEMO, model=str(demo_model), lora_checkpoint="no-such-adapter")
    with pytest.raises(ValueError, match="LoRA to start from"):
        planning.launch_preview(store, opts)


def test_a_run_with_no_scores_yet_has_no_best_adapters(store, tmp_path):
    run = store.runs.create("p", "r", str(tmp_path / "run"), {}, "cpu")
    store.runs.update(run["id"], run_dir=str(tmp_path / "run"))
    assert results.scoreboard_rows(store, run["id"]) == []
    with pytest.raises(ValueError, match=f"no checkpoint of run {run['id']}"):
        results.best_adapters(store, run["id"], "psnr")
    with pytest.raises(NotFoundError):
        results.scoreboard_rows(store, run["id"] + 1)
