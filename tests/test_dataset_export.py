import json

import pandas as pd
import pytest

from studio.cli import main
from studio.dataset import importers
from studio.dataset.export import RECIPE_COLUMNS, export_dataset
from studio.dataset.instructions import set_instruction
from studio.dataset.synthetic_pairs import add_synthetic_pairs
from studio.dataset.validate import validate_project
from tests.dataset_helpers import store, write_pair  # noqa: F401 (fixture)

AWKWARD = [
    "make it red, then blue",
    'add a sign saying "open"',
    "first line\nsecond line",
    "ajoute un café ☕ et 雪",
    "=SUM(A1:A2)",
    "+1 brightness",
    "-remove the dog",
    "@mention the cat",
    "  leading and trailing spaces  ",
]


def awkward_project(store, tmp_path):
    folder = tmp_path / "awkward"
    for n, text in enumerate(AWKWARD):
        write_pair(folder, f"source_{n}.jpg", f"edited_{n}.jpg", seed=n)
        (folder / f"{n}.txt").write_text(text, encoding="utf-8")
    importers.import_folder(store, "p", folder)
    # Sidecars are stripped on import; set the exact texts through the store, as the tab does.
    for pair in store.pairs.page("p"):
        set_instruction(store, "p", pair["id"], AWKWARD[int(pair["sample_id"])])


def test_seed_export_round_trips_awkward_instructions_verbatim(store, tmp_path):
    awkward_project(store, tmp_path)
    result = export_dataset(store, "p", tmp_path / "out")
    assert result.pairs == len(AWKWARD)
    frame = pd.read_csv(tmp_path / "out" / "metadata_edit.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == RECIPE_COLUMNS
    by_id = dict(zip(frame.sample_id, frame.prompt))
    assert [by_id[str(n)] for n in range(len(AWKWARD))] == AWKWARD
    row = frame[frame.sample_id == "0"].iloc[0]
    assert row.image == "images/edited_0.jpg" and row.edit_image == "images/source_0.jpg"
    assert (tmp_path / "out" / row.image).read_bytes() == (tmp_path / "awkward" / "edited_0.jpg").read_bytes()
    assert (tmp_path / "out" / row.edit_image).read_bytes() == (tmp_path / "awkward" / "source_0.jpg").read_bytes()


def test_export_then_reimport_gives_the_same_pairs(store, tmp_path):
    awkward_project(store, tmp_path)
    export_dataset(store, "p", tmp_path / "out")
    store.create_project("q")
    report = importers.import_metadata(store, "q", tmp_path / "out" / "metadata_edit.csv")
    assert report.added == len(AWKWARD) and not report.notes  # no swap: our own convention
    keys = lambda name: {(p["source_hash"], p["target_hash"], p["instruction"])  # noqa: E731
                         for p in store.pairs.page(name)}
    assert keys("q") == keys("p")


def test_validation_pairs_and_error_pairs_are_kept_apart(store, tmp_path):
    add_synthetic_pairs(store, "p", count=4)  # the last one is a validation pair
    first = store.pairs.page("p")[0]
    set_instruction(store, "p", first["id"], "   ")
    result = export_dataset(store, "p", tmp_path / "out")
    assert (result.pairs, result.validation_pairs, result.skipped_errors) == (2, 1, 1)
    train = pd.read_csv(tmp_path / "out" / "metadata_edit.csv")
    validation = pd.read_csv(tmp_path / "out" / "metadata_validation.csv")
    assert len(train) == 2 and list(validation.sample_id) == ["sample_003"]
    with pytest.raises(ValueError, match="not empty"):
        export_dataset(store, "p", tmp_path / "out")


def _multi_input_project(store, tmp_path):
    folder = tmp_path / "multi"
    for n in range(3):
        write_pair(folder, f"images/source_{n}.jpg", f"images/edited_{n}.jpg", seed=n)
    records = [{"image": "images/edited_0.jpg", "edit_image": ["images/source_0.jpg", "images/source_1.jpg"],
                "prompt": "put both together", "sample_id": "two"},
               {"image": "images/edited_2.jpg", "edit_image": "images/source_2.jpg", "prompt": "one", "sample_id": "one"}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    importers.import_metadata(store, "p", folder / "metadata.jsonl")


def test_diffsynth_jsonl_keeps_input_lists(store, tmp_path):
    _multi_input_project(store, tmp_path)
    export_dataset(store, "p", tmp_path / "out", "diffsynth")
    records = {r["sample_id"]: r for r in pd.read_json(tmp_path / "out" / "metadata.jsonl", lines=True).to_dict("records")}
    assert records["two"]["edit_image"] == ["images/source_two.jpg", "images/source_two_2.jpg"]
    assert records["one"]["edit_image"] == "images/source_one.jpg" and records["one"]["image"] == "images/edited_one.jpg"
    assert all((tmp_path / "out" / p).is_file() for p in records["two"]["edit_image"])
    seed = export_dataset(store, "p", tmp_path / "seed")
    assert "only the first" in seed.notes[0]


def test_aitoolkit_and_musubi_layouts(store, tmp_path):
    _multi_input_project(store, tmp_path)
    export_dataset(store, "p", tmp_path / "ai", "aitoolkit")
    out = tmp_path / "ai"
    assert (out / "targets" / "one.txt").read_text() == "one"
    assert (out / "targets" / "one.jpg").is_file() and (out / "control" / "one.jpg").is_file()
    assert (out / "control_2" / "two.jpg").is_file() and not (out / "control_2" / "one.jpg").exists()
    export_dataset(store, "p", tmp_path / "mu", "musubi")
    records = pd.read_json(tmp_path / "mu" / "metadata.jsonl", lines=True)
    assert {"image_path", "control_path", "caption"} <= set(records.columns)
    one = records[records.caption == "one"].iloc[0]
    assert one.image_path.endswith("images/edited_one.jpg") and one.control_path.endswith("source_one.jpg")
    two = records[records.caption == "put both together"].iloc[0]
    assert two.control_path_1.endswith("source_two_2.jpg")
    # The exported folder imports back through the folder importer (ai-toolkit naming).
    store.create_project("back")
    assert importers.import_folder(store, "back", tmp_path / "ai").added == 2


def test_validate_finds_missing_files_and_cli_exit_codes(store, tmp_path, capsys):
    add_synthetic_pairs(store, "p", count=3)
    assert validate_project(store, "p").errors == 0
    args = ["--projects-dir", str(store.root), "dataset", "validate", "--project", "p", "--json"]
    assert main(args) == 0
    pair = store.pairs.page("p")[0]
    store.pairs.path("p", pair["target_path"]).unlink()
    capsys.readouterr()
    assert main(args) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 1 and "missing" in report["problems"][0]["message"]
    assert store.pairs.get("p", pair["id"])["status"] == "error"
