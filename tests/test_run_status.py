"""The run status state machine, and the store's compare-and-set that applies a move."""
import pytest

from studio.jobs.status import ENDED, MOVES, check_move, settled
from studio.store.runs import ACTIVE, STATUSES
from tests.dataset_helpers import store  # noqa: F401 (fixture)


def test_every_status_has_its_moves_and_every_move_lands_on_a_status():
    assert set(MOVES) == set(STATUSES)
    assert all(targets <= set(STATUSES) for targets in MOVES.values())
    assert set(ENDED) == {"stopped", "finished", "failed"}
    # An ended run only goes back to the queue; an active one never does.
    assert all(MOVES[s] == {"queued"} for s in ENDED)
    assert not any("queued" in MOVES[s] for s in ACTIVE)


@pytest.mark.parametrize("current, new", [("finished", "running"), ("queued", "finished"),
                                          ("stopping", "running"), ("failed", "stopped")])
def test_moves_the_machine_does_not_allow_are_refused(current, new):
    with pytest.raises(ValueError, match=f"a {current} run cannot become {new}"):
        check_move(current, new)


@pytest.mark.parametrize("current, code, final, state, expected", [
    ("running", 0, True, True, "finished"),
    ("running", 0, False, True, "stopped"),     # stopped from outside, with a resume state
    ("running", 0, False, False, "failed"),     # exited 0 but left nothing to resume from
    ("running", 1, True, True, "failed"),
    ("running", None, False, True, "failed"),   # vanished without an exit status
    ("stopping", 1, False, False, "stopped"),   # asked to stop: stopped, however it ended
    ("stopping", 0, True, True, "stopped"),
])
def test_an_ended_run_is_settled_from_what_it_left(current, code, final, state, expected):
    assert settled(current, code, final, state) == expected


def test_a_move_applies_only_to_the_status_it_was_decided_from(store):  # noqa: F811
    run = store.runs.create("p", "run", "", {}, "cpu")
    moved = store.runs.move(run["id"], "queued", "running", pid=123)
    assert (moved["status"], moved["pid"]) == ("running", 123)
    # Another process settled it meanwhile: a move decided from the old status changes nothing.
    assert store.runs.move(run["id"], "queued", "failed", error="late") is None
    assert store.runs.get(run["id"])["status"] == "running"
    with pytest.raises(ValueError, match="not columns of runs"):
        store.runs.move(run["id"], "running", "failed", **{"error = 1; --": "x"})
