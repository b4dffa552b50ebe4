import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from studio.cli import main
from tests.conftest import make_image

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_project_create_and_list(projects, capsys):
    assert main(["project", "create", "cats"]) == 0
    assert main(["--projects-dir", str(projects), "project", "create", "dogs"]) == 0
    assert (projects / "cats").is_dir() and (projects / "studio.db").is_file()
    capsys.readouterr()
    assert main(["project", "list"]) == 0
    listed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["cats", "dogs"]
    assert main(["project", "create", "cats"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_edit_with_a_broken_model_folder_names_the_problem(tmp_path, capsys):
    make_image().save(tmp_path / "in.png")
    code = main(["edit", "--model", str(tmp_path), "--image", str(tmp_path / "in.png"),
                 "--prompt", "x", "--out", str(tmp_path / "out.png")])
    assert code == 2
    assert "model_index.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_edit_twice_with_the_same_seed_gives_identical_pixels(demo_model, tmp_path):
    make_image(80, 80).save(tmp_path / "in.png")
    env = {**os.environ, "STUDIO_PROJECTS_DIR": str(tmp_path / "projects")}
    outputs = []
    for name in ("a.png", "b.png"):
        done = run_cli("edit", "--model", str(demo_model), "--image", str(tmp_path / "in.png"),
                       "--prompt", "make the sky blue", "--seed", "5", "--steps", "2",
                       "--size", "48x48", "--out", str(tmp_path / name), env=env)
        assert done.returncode == 0, done.stderr
        assert "random weights" in done.stdout
        assert "editing" in done.stderr  # the progress bar
        outputs.append(np.asarray(Image.open(tmp_path / name)))
    assert outputs[0].shape == (48, 48, 3)
    assert np.array_equal(outputs[0], outputs[1])


def test_demo_model_command_builds_under_the_projects_folder(projects):
    assert main(["demo-model"]) == 0
    assert (projects / "_models" / "demo" / "model_index.json").is_file()


def test_edit_batch_over_a_folder_reports_bad_inputs_and_resumes(demo_model, tmp_path, capsys):
    from studio.engine.editor import Editor

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    make_image(48, 48, seed=1).save(inputs / "a.png")
    make_image(48, 48, seed=2).save(inputs / "b.png")
    (inputs / "b.txt").write_text("turn it upside down")  # b's own instruction
    (inputs / "c.png").write_bytes(b"not an image")
    args = ["edit-batch", "--model", str(demo_model), "--input-dir", str(inputs), "--prompt",
            "make the sky blue", "--steps", "2", "--size", "32x32", "--seed", "3",
            "--out-dir", str(out)]
    assert main(args) == 1  # c failed, the others were written
    printed = capsys.readouterr().out
    assert "skipped c:" in printed and "wrote 2 edit(s)" in printed
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["output"], r["prompt"]) for r in index] == [("a.png", "make the sky blue"),
                                                          ("b.png", "turn it upside down")]

    # Each output is the same edit a single call makes.
    single = Editor(demo_model, device="cpu").edit(Image.open(inputs / "b.png"),
                                                   "turn it upside down", seed=3, steps=2,
                                                   size=(32, 32))
    assert np.array_equal(np.asarray(single.image), np.asarray(Image.open(out / "b.png")))

    (inputs / "c.png").unlink()
    before = (out / "a.png").stat().st_mtime_ns
    assert main(args) == 0  # again: nothing redone
    assert "2 already there" in capsys.readouterr().out
    assert (out / "a.png").stat().st_mtime_ns == before


def test_edit_batch_over_a_project_s_validation_pairs(demo_model, projects, tmp_path, capsys):
    from studio.dataset.synthetic_pairs import add_synthetic_pairs
    from studio.store import Store

    store = Store(projects)
    store.create_project("p")
    add_synthetic_pairs(store, "p", 3)
    held_out = store.pairs.page("p", split="train")[0]
    store.pairs.set_split("p", [held_out["id"]], "validation")
    validation = store.pairs.page("p", split="validation")
    assert 1 < len(validation) < store.pairs.count("p")  # the samples hold one out themselves
    out = tmp_path / "val"
    assert main(["edit-batch", "--model", str(demo_model), "--project", "p", "--split",
                 "validation", "--steps", "2", "--size", "32x32", "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{v['sample_id']}.png" for v in validation)
    rows = {json.loads(line)["output"]: json.loads(line)
            for line in (out / "index.jsonl").read_text().splitlines()}
    row = rows[f"{held_out['sample_id']}.png"]
    assert row["prompt"] == held_out["instruction"]
    assert row["target"] == str(store.pairs.path("p", held_out["target_path"]))
