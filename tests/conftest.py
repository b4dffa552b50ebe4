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
