"""Helpers shared by the dataset tests: a store with a project, encoded test images."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from studio.store import Store
from tests.conftest import make_image


def encoded(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(seed: int = 0, width: int = 96, height: int = 64) -> bytes:
    return encoded(make_image(width, height, seed), "JPEG", quality=90)


def write_pair(folder, source_name, target_name, seed=0, size=(96, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / source_name).parent.mkdir(parents=True, exist_ok=True)
    (folder / target_name).parent.mkdir(parents=True, exist_ok=True)
    (folder / source_name).write_bytes(jpeg(seed, *size))
    (folder / target_name).write_bytes(jpeg(seed + 100, *size))


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "projects")
    store.create_project("p")
    yield store
    store.close()
