"""The Dataset tab's instruction writer, driven through its handlers as the page calls them."""
import threading

import gradio as gr
import numpy as np
import pytest

from studio.dataset import importers
from studio.jobs.instruction_writing import InstructionJobs
from studio.store import Store
from studio.ui import dataset_tab, instruction_review as review
from tests.conftest import make_image
from tests.test_instruction_writer import headless_copy
from tests.waiting import wait_for


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "projects")
    store.create_project("p")
    for n, text in enumerate(["", "", "Turn the sky into a sunset"]):
        make_image(96, 64, n).save(tmp_path / f"s{n}.png")
        make_image(96, 64, n + 10).save(tmp_path / f"t{n}.png")
        importers.import_pair(store, "p", tmp_path / f"s{n}.png", tmp_path / f"t{n}.png", text,
                              sample_id=f"pair{n}")
    yield store
    store.close()


def test_write_review_and_apply_through_the_panel(store, demo_model):
    note = review.model_note(store, str(demo_model), "")
    assert "own text encoder" in note and "nonsense" in note  # the UI says so, as for edits
    jobs = InstructionJobs()
    # The job's thread waits before its model loads (the before_load hook the UI frees the
    # editor in) until the test lets it go: it is still writing when the second click comes.
    loading, go_on = threading.Event(), threading.Event()
    engine = {"device": "cpu", "before_load": lambda device: loading.set() or go_on.wait(120)}
    started = review.start(store, jobs, "p", str(demo_model), "", "missing", "",
                           review.INSTRUCTION_PROMPT, 6, engine)
    assert "2 pair(s)" in started
    assert loading.wait(120), "the writer's thread never got to its model"
    with pytest.raises(gr.Error, match="already being written"):  # its model is still loading
        review.start(store, jobs, "p", str(demo_model), "", "missing", "",
                     review.INSTRUCTION_PROMPT, 6, {"device": "cpu"})
    go_on.set()
    wait_for(lambda: not review.progress(store, "p", jobs)[1], what="the writer to end",
             interval=0.2)  # as the page polls
    bar, alive = review.progress(store, "p", jobs)
    assert not alive and "2 / 2 pairs · finished · 2 pending review" in bar and "<progress" in bar

    rows = review.pending_rows(store, "p")
    assert [r[1] for r in rows] == ["pair0", "pair1"]
    proposal_id, source, target, diff, text, info = review.show(store, "p", rows[1][0])
    assert proposal_id == rows[1][0] and text == rows[1][3] and "pair1" in info
    assert source.size == target.size == (96, 64) and np.asarray(diff).max() > 0

    assert "1 accepted" in review.decide(store, "p", proposal_id, "Swap the hues", "accept", False)
    assert store.pairs.find("p", "pair1")["instruction"] == "Swap the hues"
    first = review.show(store, "p", None)  # the next pending one
    assert first[0] == rows[0][0]
    assert "1 rejected" in review.decide(store, "p", first[0], first[4], "reject", False)
    assert review.show(store, "p", None)[-1] == "No proposals waiting for review."
    assert "back to ''" in review.undo(store, "p", store.pairs.find("p", "pair1")["id"])
    assert "Nothing is being written" in review.cancel(jobs, "p")


def test_a_run_no_thread_here_runs_is_shown_as_such_and_not_polled(store):
    store.proposals.start_job("p", "some model", "prompt", 5, "missing", 3)  # a crash left it
    bar, alive = review.progress(store, "p", InstructionJobs())
    assert "running elsewhere (a CLI run) or interrupted" in bar and not alive


def test_the_panel_refuses_clearly(store, demo_model, tmp_path):
    headless = headless_copy(demo_model, tmp_path / "headless")
    assert "no lm_head" in review.model_note(store, str(headless), "")
    with pytest.raises(gr.Error, match="Qwen2.5-VL-7B-Instruct"):
        review.start(store, InstructionJobs(), "p", str(headless), "", "missing", "", "", 6, {})
    with pytest.raises(gr.Error, match="give a search text"):
        review.start(store, InstructionJobs(), "p", str(demo_model), "", "search", "", "", 6, {})
    for pair in store.pairs.iterate("p"):
        store.pairs.set_instructions([(pair["id"], "x y z", [])])
    with pytest.raises(gr.Error, match="No pairs to write for"):
        review.start(store, InstructionJobs(), "p", str(demo_model), "", "missing", "", "", 6, {})
    with pytest.raises(gr.Error, match="only use"):
        review.start(store, InstructionJobs(), "p", str(demo_model), "", "all", "", "{nope}", 6, {})


def test_the_browser_shows_a_difference_view_per_pair(store):
    images, rows, info, page = dataset_tab._show_page(store, "p", "", 1)
    assert len(images) == 3 * len(rows) == 9 and images[2][1] == "pair0 · difference"
    assert np.asarray(images[2][0]).max() > 0
