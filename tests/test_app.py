"""The browser app, started as a user starts it, driven through its HTTP API."""
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url: str, proc: subprocess.Popen, timeout: float = 120) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"app exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} not served within {timeout}s")


@pytest.fixture(scope="module")
def app_url(demo_model, tmp_path_factory):
    projects = tmp_path_factory.mktemp("app") / "projects"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--model", str(demo_model), "--projects-dir", str(projects),
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_page_says_it_runs_the_random_weight_demo(app_url):
    with urllib.request.urlopen(app_url) as response:
        page = response.read().decode()
    assert "Qwen Image Edit Studio" in page
    assert "random weights" in page and "--model" in page


def test_an_edit_through_the_api_returns_an_image_and_is_kept(app_url, tmp_path):
    make_image(64, 48).save(tmp_path / "in.png")
    client = Client(app_url, verbose=False)
    image_path, note = client.predict(
        "default", handle_file(str(tmp_path / "in.png")), None, None, "make the sky blue", "",
        3, 2, 1.0, 64, 48, api_name="/edit")
    assert Image.open(image_path).size == (64, 48)
    assert "saved to `default` history" in note


def test_an_edit_without_an_image_is_refused_with_a_message(app_url):
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="Upload an input image"):
        client.predict("default", None, None, None, "make the sky blue", "", 0, 2, 1.0, 0, 0,
                       api_name="/edit")
