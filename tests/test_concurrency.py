"""Two sessions at once against one running studio: pairs added and edits run side by side
lose no rows, crash nothing, and the GPU-bound events take turns (one 'gpu' queue)."""
import threading
from pathlib import Path

from gradio_client import Client, handle_file
from PIL import Image
import pytest

from studio.store import Store
from tests.conftest import make_image
from tests.dataset_helpers import jpeg

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

PAIRS_EACH, EDITS_EACH = 4, 2
NO_ADAPTERS = (None, 1.0) * 3


def session(url, who: int, folder, results: dict, errors: list):
    """One browser session: alternately adds a pair and runs an edit (and one comparison)."""
    try:
        client = Client(url, verbose=False)
        make_image(40, 32, seed=who).save(folder / f"in{who}.png")
        edits = []
        for i in range(PAIRS_EACH):
            source, target = folder / f"s{who}_{i}.jpg", folder / f"t{who}_{i}.jpg"
            source.write_bytes(jpeg(100 * who + 2 * i))  # distinct images: no duplicates
            target.write_bytes(jpeg(100 * who + 2 * i + 1))
            report, *_ = client.predict("default", handle_file(str(source)), handle_file(str(target)),
                                        f"session {who} pair {i}", "", 1, api_name="/dataset_add_pair")
            assert "1 pairs added" in report, report
            if i < EDITS_EACH:
                edits.append(client.predict(
                    "default", handle_file(str(folder / f"in{who}.png")), None, None,
                    f"session {who} edit {i}", "", i, 2, 1.0, 32, 32, *NO_ADAPTERS,
                    api_name="/edit"))
        grid, note, _ = client.predict(
            "default", handle_file(str(folder / f"in{who}.png")), None, f"session {who}", "",
            ["base"], "1", "0", "", 2, 1.0, 32, 32, api_name="/compare")
        results[who] = {"edits": edits, "grid": grid}
    except Exception as exc:  # noqa: BLE001  (reported by the test below)
        errors.append((who, repr(exc)))


def test_two_sessions_add_pairs_and_edit_at_the_same_time(app_url, tmp_path):
    url, projects = app_url
    store = Store(projects)
    pairs_before = store.pairs.count("default")
    edits_before = len(store.list_edits("default", limit=1000))
    results, errors = {}, []
    threads = [threading.Thread(target=session, args=(url, who, tmp_path, results, errors))
               for who in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == [1, 2]

    for who, result in results.items():
        assert len(result["edits"]) == EDITS_EACH
        for image_path, note, _ in result["edits"]:
            assert Image.open(image_path).size == (32, 32) and "saved to `default`" in note
        assert Image.open(result["grid"]).size[0] >= 32

    assert store.pairs.count("default") == pairs_before + 2 * PAIRS_EACH  # no row lost
    texts = {row["instruction"] for row in store.pairs.iterate("default")}
    assert {f"session {w} pair {i}" for w in (1, 2) for i in range(PAIRS_EACH)} <= texts
    rows = store.list_edits("default", limit=1000)  # newest first
    rows = rows[:len(rows) - edits_before]
    assert sorted(r["kind"] for r in rows) == ["compare"] * 2 + ["edit"] * (2 * EDITS_EACH)
    # One 'gpu' queue: the edits and comparisons ran one after another. Each ran for `seconds`
    # and ended just before its output.png was written, so the intervals must not overlap.
    spans = sorted((Path(r["output_path"]).stat().st_mtime - r["seconds"],
                    Path(r["output_path"]).stat().st_mtime) for r in rows)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.25, spans
    integrity = store.db.execute("PRAGMA integrity_check").fetchone()[0]
    assert integrity == "ok"
