"""Shared fixtures: every test runs offline on CPU against the tiny demo model."""
from __future__ import annotations

import os
import signal

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    # `make test-fast` leaves these out: whole trainer runs, served apps, the browser.
    config.addinivalue_line("markers", "slow: runs real training or a served app (minutes)")


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """The demo model, built once for the whole run (it takes seconds)."""
    from studio.engine.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(scope="session")
def demo_editor(demo_model):
    from studio.engine.editor import Editor

    return Editor(demo_model, device="cpu")


@pytest.fixture(scope="session")
def app_url(demo_model, tmp_path_factory):
    """One served app (python app.py on the demo model) for the tests that need one:
    (its url, its projects folder). Each test works in its own project or its own files."""
    from tests.app_process import running_app

    folder = tmp_path_factory.mktemp("app")
    projects = folder / "projects"
    with running_app(["--model", str(demo_model), "--projects-dir", str(projects)],
                     folder / "app.log") as url:
        yield url, projects


# The trainer arguments of the shared sampled run: a high learning rate so that 2 steps move
# the demo model's output visibly.
SAMPLED_ARGS = ["--max_steps", 4, "--save_steps", 2, "--sample_inference_steps", 2,
                "--learning_rate", 3e-2]
SAMPLED_IDS = ["val/0", "val/1"]  # with a slash: the sample file names must still be safe
SAMPLED_SIZE = (64, 48)  # not the 64x64 of the training pairs: the output follows the target


@pytest.fixture(scope="session")
def sampled_run(demo_model, tmp_path_factory, worker_id):
    """One real trainer run with sample edits at steps 2 and 4, shared by the sample and
    scoreboard tests, also across xdist workers (the first trains it under a file lock, the
    others wait and read it). Read-only: a test that changes it works on a copy.
    Returns (dataset folder, output folder, the trainer's stderr)."""
    from filelock import FileLock

    from tests.trainer_helpers import add_validation_pairs, make_dataset, run_trainer

    shared = tmp_path_factory.getbasetemp()
    shared = shared if worker_id == "master" else shared.parent  # the session's, not a worker's
    data, out, log = shared / "sampled-data", shared / "sampled-run", shared / "sampled.log"
    with FileLock(str(shared / "sampled.lock")):
        if not log.exists():
            add_validation_pairs(make_dataset(data), SAMPLED_IDS, size=SAMPLED_SIZE)
            for i in range(len(SAMPLED_IDS)):  # targets that edit one box, as real pairs do
                image = Image.open(data / f"images/source_v{i}.png").convert("RGB")
                box = (20, 10, 44, 30)
                image.paste(Image.eval(image.crop(box), lambda v: 255 - v), box)
                image.save(data / f"images/edited_v{i}.png")
            log.write_text(run_trainer(demo_model, data, out, *SAMPLED_ARGS).stderr)
    return data, out, log.read_text()


@pytest.fixture
def projects(tmp_path, monkeypatch):
    """A fresh projects folder, also set as $STUDIO_PROJECTS_DIR for code that reads it."""
    root = tmp_path / "projects"
    monkeypatch.setenv("STUDIO_PROJECTS_DIR", str(root))
    return root


def make_image(width=96, height=64, seed=0) -> Image.Image:
    """A small deterministic picture (a colour gradient with a seed-dependent tint)."""
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7 + seed * 40) % 256, (y * 5) % 256, (x + y + seed * 90) % 256)
                   for y in range(height) for x in range(width)])
    return image


@pytest.fixture
def jobs(tmp_path):
    """A job manager over a fresh store whose project 'p' holds four sample pairs."""
    from studio.dataset.synthetic_pairs import add_synthetic_pairs
    from studio.store import Store
    from studio.jobs.manager import JobManager

    store = Store(tmp_path / "projects")
    store.create_project("p")
    add_synthetic_pairs(store, "p", 4)
    return JobManager(store)


@pytest.fixture
def groups():
    """Process groups a test started; whatever of them is left is killed afterwards."""
    started: list[int] = []
    yield started
    for pgid in started:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
