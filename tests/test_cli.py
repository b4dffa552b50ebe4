import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from studio.cli import main
from tests.conftest import make_image

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
