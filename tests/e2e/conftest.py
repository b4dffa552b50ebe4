"""Browser fixtures: the studio started on a free port with the demo model and a fresh projects
folder, and Debian's Chromium driven by Playwright (its own browser download fails here)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_app import ROOT, free_port, wait_until_served

CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "artifacts" / "e2e"
USER, PASSWORD = "e2e", "browser-pass"


@pytest.fixture(scope="session")
def studio(demo_model, tmp_path_factory):
    """(url, projects folder) of a studio that asks for a login, as on a shared node."""
    projects = tmp_path_factory.mktemp("e2e") / "projects"
    port = free_port()
    env = dict(os.environ, STUDIO_AUTH=f"{USER}:{PASSWORD}")
    log = (tmp_path_factory.getbasetemp() / "e2e-app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--model", str(demo_model), "--projects-dir", str(projects),
         "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_served(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}/", projects
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def browser_page(tmp_path_factory):
    """One Chromium page with a fresh profile. A missing browser fails the run: never a skip."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with "
                    "`apt-get install -y chromium` (.ci/run does) or set STUDIO_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -r requirements-dev.txt")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            context.close()
