"""The whole path a person takes, in a real browser: log in → create a project → add one pair
and the sample pairs → validate → fine-tune (progress and loss curve move) → stop and resume
→ edit with the new adapter → compare base and adapter side by side. Each step checks what
the page shows and leaves a screenshot in artifacts/e2e/."""
from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect
import pytest

from studio.store import Store
from studio.trainer import process_group
from tests.conftest import make_image
from tests.dataset_helpers import jpeg
from tests.e2e.conftest import ARTIFACTS, FAULT_MARKER, PASSWORD, USER
from tests.waiting import wait_for

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

PROJECT = "e2e"
TRAIN_STEPS = 12


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def textbox(page: Page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def pick(page: Page, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown by (part of) its label."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def small_output(page: Page) -> None:
    """32×32 outputs keep the CPU edits quick."""
    for label in ("Width (0 = from input)", "Height (0 = from input)"):
        field = page.get_by_label(label).filter(visible=True)
        field.fill("32")
        field.press("Tab")


def train_step(page: Page) -> int:
    return int(page.locator("#train-progress").get_attribute("data-step"))


def log_in(page: Page, url: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#model-notice")).to_contain_text("random weights", timeout=60_000)
    shot(page, "01-logged-in")


def create_project(page: Page) -> None:
    page.get_by_label("New project").fill(PROJECT)
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_label("Project", exact=True)).to_have_value(PROJECT)
    expect(page.locator("#ds-page-info")).to_contain_text("0 pairs")
    shot(page, "02-project-created")


def add_pairs(page: Page, tmp_path) -> None:
    (tmp_path / "before.jpg").write_bytes(jpeg(11))
    (tmp_path / "after.jpg").write_bytes(jpeg(12))
    page.locator("#ds-source input[type=file]").set_input_files(str(tmp_path / "before.jpg"))
    page.locator("#ds-target input[type=file]").set_input_files(str(tmp_path / "after.jpg"))
    expect(page.locator("#ds-source img")).to_be_visible()
    expect(page.locator("#ds-target img")).to_be_visible()
    textbox(page, "ds-instruction").fill("add a red balloon")
    page.locator("#ds-add-pair").click()
    report = textbox(page, "ds-import-report")
    expect(report).to_have_value(re.compile("1 pairs added"))
    expect(page.locator("#ds-page-info")).to_contain_text("1 pairs")
    page.locator("#ds-samples").click()
    expect(report).to_have_value(re.compile("8 pairs added"))
    expect(page.locator("#ds-page-info")).to_contain_text("9 pairs")
    expect(page.locator("#ds-table")).to_contain_text("add a red balloon")
    shot(page, "03-pairs-added")


def validate(page: Page) -> None:
    page.get_by_text("Validate", exact=True).click()  # opens the accordion
    page.locator("#ds-validate").click()
    expect(page.locator("#ds-validate-summary")).to_contain_text(
        re.compile(rf"{PROJECT}: 9 pairs, \d+ ok"), timeout=60_000)
    shot(page, "04-validated")


def train_stop_resume(page: Page, projects: Path) -> None:
    open_tab(page, "Train")
    page.get_by_text("Trainer options", exact=True).click()
    for label, value in (("Max steps", TRAIN_STEPS), ("Save every N steps", 4)):
        field = page.get_by_label(label)
        field.fill(str(value))
        field.press("Tab")
    page.locator("#train-start").click()
    expect(page.locator("#train-run input").first).to_have_value(re.compile(r"#\d+"))
    first = wait_for(lambda: train_step(page) > 0 and train_step(page), 180, "the first step")
    expect(page.locator("#train-status")).to_contain_text("running")
    expect(page.locator("#train-status")).to_contain_text("loss")
    curve_before = page.locator("#train-loss").screenshot()
    shot(page, "05-training")
    # The trainer waits at its step-4 checkpoint until it is stopped (FAULT_AT): the run
    # cannot end before the Stop, and stops one step later.
    wait_for((projects.parent / FAULT_MARKER).exists, 180, "the trainer at its step-4 checkpoint")
    wait_for(lambda: train_step(page) == 4, 60, "the progress bar at step 4")

    page.locator("#train-stop").click()
    expect(page.locator("#train-status")).to_contain_text("stopped", timeout=60_000)
    stopped_at = wait_for(lambda: train_step(page) == 5 and 5, 60, "the progress bar at step 5")
    assert stopped_at > first  # the progress bar moved (first <= 4: the trainer waited there)
    assert page.locator("#train-loss").screenshot() != curve_before  # and the curve grew
    # Nothing moves while stopped: no process of the run is left.
    (run,) = Store(projects).runs.list(PROJECT)
    assert run["status"] == "stopped" and not process_group.alive(run["pid"])
    shot(page, "06-stopped")

    page.locator("#train-resume").click()
    wait_for(lambda: train_step(page) > stopped_at and train_step(page), 180, "the resumed run")
    expect(page.locator("#train-status")).to_contain_text("finished", timeout=240_000)
    assert train_step(page) == TRAIN_STEPS
    expect(page.locator("#train-progress")).to_contain_text(f"step {TRAIN_STEPS} / {TRAIN_STEPS}")
    shot(page, "07-finished")


def edit_with_adapter(page: Page, tmp_path) -> str:
    make_image(64, 48, seed=3).save(tmp_path / "input.png")
    open_tab(page, "Edit")
    page.get_by_text("History of this project", exact=True).click()
    page.get_by_role("button", name="Refresh history").click()  # re-reads the adapters too
    page.locator("#edit-input input[type=file]").set_input_files(str(tmp_path / "input.png"))
    textbox(page, "edit-prompt").fill("make the sky purple")
    pick(page, "edit-adapter-0", f"step {TRAIN_STEPS}")
    adapter = page.locator("#edit-adapter-0 input").first.input_value()
    small_output(page)
    page.locator("#edit-run").click()
    status = page.locator("#edit-status")
    expect(status).to_contain_text(f"saved to {PROJECT} history", timeout=120_000)
    expect(status).to_contain_text("@ 1")
    expect(page.locator("#edit-output img")).to_be_visible()
    shot(page, "08-edited-with-adapter")
    return adapter


def compare_base_and_adapter(page: Page, url: str, tmp_path, adapter: str) -> None:
    # The Compare tab reads its adapter list on page load and project change, so a person
    # coming from a fresh run reloads the page and picks the project again.
    page.goto(url)
    page.get_by_label("Project", exact=True).click()
    page.get_by_role("option", name=PROJECT, exact=True).click()
    expect(page.get_by_label("Project", exact=True)).to_have_value(PROJECT)
    open_tab(page, "Compare")
    page.locator("#compare-input input[type=file]").set_input_files(str(tmp_path / "input.png"))
    textbox(page, "compare-prompt").fill("make the sky purple")
    pick(page, "compare-adapters", f"step {TRAIN_STEPS}")
    page.keyboard.press("Escape")
    small_output(page)
    expect(page.locator("#compare-adapters")).to_contain_text(adapter.split(" (")[0])
    page.locator("#compare-run").click()
    status = page.locator("#compare-status")
    expect(status).to_contain_text("1 seed(s) × 2 column(s)", timeout=120_000)
    grid = page.locator("#compare-grid img")
    expect(grid).to_be_visible()
    width, height = grid.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > height  # two columns side by side
    shot(page, "09-compared")


def test_the_whole_path_in_a_browser(browser_page, studio, tmp_path):  # browser first: fail fast
    url, projects = studio
    page = browser_page
    try:
        log_in(page, url)
        create_project(page)
        add_pairs(page, tmp_path)
        validate(page)
        train_stop_resume(page, projects)
        adapter = edit_with_adapter(page, tmp_path)
        compare_base_and_adapter(page, url, tmp_path, adapter)
    except Exception:
        shot(page, "failure")  # what the page showed when a step failed
        raise
