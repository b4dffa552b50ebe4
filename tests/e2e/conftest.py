"""Browser fixtures: the studio started on a free port with the demo model and a fresh projects
folder, and Debian's Chromium driven by Playwright (its own browser download fails here)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.app_process import ROOT, running_app

CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "artifacts" / "e2e"
USER, PASSWORD = "e2e", "browser-pass"
# The studio's runs wait at their step-4 checkpoint, its sample edits made, until they are
# asked to stop (a fault point, studio/trainer/faults.py): the browser's Stop lands mid-run
# by construction. They write FAULT_MARKER beside the projects folder when they get there.
# (After the samples: accelerate's launcher SIGKILLs the trainer 5 s after relaying the stop,
# and from there one step and a save are left, not the sample edits too.)
FAULT_AT, FAULT_MARKER = "samples:4", "fault-marker"


@pytest.fixture(scope="session")
def studio(demo_model, tmp_path_factory):
    """(url, projects folder) of a studio that asks for a login, as on a shared node."""
    projects = tmp_path_factory.mktemp("e2e") / "projects"
    env = dict(os.environ, STUDIO_AUTH=f"{USER}:{PASSWORD}", STUDIO_FAULT_AT=FAULT_AT,
               STUDIO_FAULT_ACTION="pause-until-stop",
               STUDIO_FAULT_MARKER=str(projects.parent / FAULT_MARKER))
    with running_app(["--model", str(demo_model), "--projects-dir", str(projects)],
                     tmp_path_factory.getbasetemp() / "e2e-app.log", env) as url:
        yield url, projects


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
