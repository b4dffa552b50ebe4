"""The Dataset tab, served by Gradio in this process and driven through its HTTP API."""
import zipfile

import gradio as gr
import pandas as pd
import pytest
from gradio_client import Client, handle_file

from studio.store import Store
from studio.ui import dataset_tab, project_bar
from tests.dataset_helpers import jpeg
from tests.app_process import free_port


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve_dataset_tab(tmp_path_factory.mktemp("tab") / "projects")


def serve_dataset_tab(root):
    """The Dataset tab alone, served on a free port: (client, store) for one "default" project."""
    store = Store(root)
    store.create_project("default")
    with gr.Blocks() as app:
        project = project_bar.build(store)
        dataset_tab.build(store, project)
    app.queue()
    app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(app.local_url, verbose=False), store
    finally:
        app.close()


def test_samples_one_pair_and_a_zip_through_the_tab(served, tmp_path):
    client, store = served
    report, gallery, table, info, page = client.predict("default", "", 1, api_name="/dataset_samples")
    assert "8 pairs added" in report and len(gallery) == 24 and page == 1  # source, target, difference
    assert "8 pairs" in info and len(table["data"]) == 8

    (tmp_path / "s.jpg").write_bytes(jpeg(1))
    (tmp_path / "t.jpg").write_bytes(jpeg(2))
    report, *_ = client.predict("default", handle_file(str(tmp_path / "s.jpg")),
                                handle_file(str(tmp_path / "t.jpg")), "add a moon", "", 1,
                                api_name="/dataset_add_pair")
    assert "1 pairs added" in report

    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("source_z.jpg", jpeg(3))
        z.writestr("edited_z.jpg", jpeg(4))
        z.writestr("z.txt", "zipped, with a comma")
        z.writestr("stray.jpg", jpeg(5))
    report, *_ = client.predict("default", [handle_file(str(archive))], 0, 0, "", "", "", 1,
                                api_name="/dataset_import")
    assert "1 pairs added" in report and "unmatched: stray.jpg" in report
    assert store.pairs.count("default") == 10

    _, table, info, _ = client.predict("default", "moon", api_name="/dataset_page")
    assert [row[4] for row in table["data"]] == ["add a moon"] and "1 matching" in info

    # A trigger word on the pairs the search finds: previewed first, then applied.
    preview, *_ = client.predict("default", "sks, ", "", "", "", "moon", 1,
                                 api_name="/dataset_rewrite_preview")
    assert "1 instruction(s) would change" in preview and "'sks, add a moon'" in preview
    # Nothing written yet.
    assert [r["instruction"] for r in store.pairs.page("default", search="moon")] == ["add a moon"]
    done, _, table, _, _ = client.predict("default", "sks, ", "", "", "", "moon", 1,
                                          api_name="/dataset_rewrite")
    assert "1 instruction(s) changed" in done and [row[4] for row in table["data"]] == ["sks, add a moon"]

    before = store.pairs.count("default", split="validation")
    note, *_ = client.predict("default", "2", "", 1, api_name="/dataset_hold_out")
    assert "Held out 2 pair(s)" in note
    assert store.pairs.count("default", split="validation") == before + 2


def test_bad_upload_is_reported_and_export_writes_the_seed_layout(served, tmp_path):
    client, store = served
    (tmp_path / "source_bad.jpg").write_bytes(b"garbage")
    (tmp_path / "edited_bad.jpg").write_bytes(jpeg(9))
    before = store.pairs.count("default")
    report, *_ = client.predict("default", [handle_file(str(tmp_path / "source_bad.jpg")),
                                            handle_file(str(tmp_path / "edited_bad.jpg"))],
                                0, 0, "", "", "", 1, api_name="/dataset_import")
    assert "rejected: pair bad: source_bad.jpg: not an image" in report
    assert store.pairs.count("default") == before

    summary, problems = client.predict("default", api_name="/dataset_validate")
    assert "0 with errors" in summary

    train = store.pairs.count("default", split="train")
    validation = store.pairs.count("default", split="validation")
    # The first test added 10 pairs and held 2 out (plus any the samples keep for validation).
    assert train + validation == 10 and validation >= 2
    result = client.predict("default", "recipe", str(tmp_path / "out"), False, api_name="/dataset_export")
    assert f"wrote {train} training pairs and {validation} validation pairs" in result
    frame = pd.read_csv(tmp_path / "out" / "metadata_edit.csv")
    assert len(frame) == train
    assert len(pd.read_csv(tmp_path / "out" / "metadata_validation.csv")) == validation
    assert list(frame.columns) == ["image", "edit_image", "prompt", "sample_id"]
    assert frame.image.str.startswith("images/edited_").all()
    with pytest.raises(Exception, match="not empty"):
        client.predict("default", "recipe", str(tmp_path / "out"), False, api_name="/dataset_export")
