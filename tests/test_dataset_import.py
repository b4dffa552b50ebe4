import json
import zipfile

import pytest

from studio.dataset import importers
from studio.dataset.naming import parse_name
from tests.dataset_helpers import jpeg, store, write_pair  # noqa: F401 (fixture)


def stored(store):
    return {p["sample_id"]: p for p in store.pairs.page("p", page_size=500)}


@pytest.mark.parametrize("source, target, key_id", [
    ("source_0001.jpg", "edited_0001.jpg", "0001"),
    ("cat_source.png", "cat_target.png", "cat"),
    ("before-dog.jpg", "after-dog.jpg", "dog"),
    ("input_7.jpg", "output_7.jpg", "7"),
    ("Source/x1.jpg", "Targets/x1.jpg", "x1"),
    ("control/a.jpg", "targets/a.jpg", "a"),
])
def test_name_variants_pair_up(source, target, key_id):
    s, t = parse_name(source), parse_name(target)
    assert s.role == "source" and t.role == "target"
    assert s.key == t.key and s.id == key_id


def test_folder_import_pairs_by_name_with_sidecars_and_lists_unmatched(store, tmp_path):
    folder = tmp_path / "pairs"
    write_pair(folder, "source_0001.jpg", "edited_0001.jpg", seed=1)
    write_pair(folder, "cat_before.jpg", "cat_after.jpg", seed=2)
    write_pair(folder, "in/x.jpg", "out/x.jpg", seed=3)
    (folder / "0001.txt").write_text("make it snow\n")
    (folder / "cat.txt").write_text("paint the cat blue")
    (folder / "in" / "x.txt").write_text("add a hat")
    (folder / "source_0009.jpg").write_bytes(jpeg(9))
    (folder / "notes.md").write_text("hello")
    (folder / "orphan.txt").write_text("nobody")
    report = importers.import_folder(store, "p", folder)
    pairs = stored(store)
    assert report.added == 3 and not report.errors
    assert pairs["0001"]["instruction"] == "make it snow"
    assert pairs["cat"]["instruction"] == "paint the cat blue"
    assert pairs["x"]["instruction"] == "add a hat"
    unmatched = "\n".join(report.unmatched)
    assert "source_0009.jpg (no target" in unmatched and "notes.md" in unmatched
    assert "orphan.txt" in unmatched


def test_instructions_from_a_table_and_missing_ones_are_flagged(store, tmp_path):
    folder = tmp_path / "pairs"
    for n in (1, 2, 3):
        write_pair(folder, f"source_{n}.jpg", f"edited_{n}.jpg", seed=n)
    (folder / "prompts.jsonl").write_text(
        json.dumps({"file": "edited_1.jpg", "instruction": "one"}) + "\n"
        + json.dumps({"id": "2", "instruction": "two"}) + "\n")
    report = importers.import_folder(store, "p", folder)
    pairs = stored(store)
    assert pairs["1"]["instruction"] == "one" and pairs["2"]["instruction"] == "two"
    assert pairs["3"]["status"] == "error"  # kept, so it can be fixed in the tab
    assert any("empty instruction" in message for _, message in report.warnings)


def test_reimport_adds_nothing_and_stores_each_image_once(store, tmp_path):
    folder = tmp_path / "pairs"
    write_pair(folder, "source_1.jpg", "edited_1.jpg", seed=1)
    write_pair(folder, "source_2.jpg", "edited_2.jpg", seed=1)  # same images, other id
    (folder / "1.txt").write_text("same")
    (folder / "2.txt").write_text("same")
    first = importers.import_folder(store, "p", folder)
    second = importers.import_folder(store, "p", folder)
    assert (first.added, first.already_present) == (1, 1)
    assert (second.added, second.already_present) == (0, 2)
    assert store.pairs.count("p") == 1
    files = [p for p in (store.project_dir("p") / "images").rglob("*") if p.is_file()]
    assert len(files) == 2


def test_same_images_with_other_instructions_are_marked_duplicates(store, tmp_path):
    folder = tmp_path / "pairs"
    write_pair(folder, "source_1.jpg", "edited_1.jpg", seed=1)
    write_pair(folder, "source_2.jpg", "edited_2.jpg", seed=1)
    (folder / "1.txt").write_text("make it red")
    (folder / "2.txt").write_text("turn it red")
    importers.import_folder(store, "p", folder)
    pairs = stored(store)
    assert {p["status"] for p in pairs.values()} == {"warning"}
    assert "duplicate" in pairs["1"]["issues"][-1]["message"] and "2" in pairs["1"]["issues"][-1]["message"]


def test_bad_rows_are_reported_and_good_rows_kept(store, tmp_path):
    folder = tmp_path / "pairs"
    write_pair(folder, "source_good.jpg", "edited_good.jpg", seed=1)
    (folder / "good.txt").write_text("fine")
    importers.import_folder(store, "p", folder)
    bad = tmp_path / "bad"
    write_pair(bad, "source_ok.jpg", "edited_ok.jpg", seed=2)
    (bad / "source_broken.jpg").write_bytes(jpeg(3)[:300])
    (bad / "edited_broken.jpg").write_bytes(jpeg(4))
    (bad / "source_empty.jpg").write_bytes(b"")
    (bad / "edited_empty.jpg").write_bytes(jpeg(5))
    (bad / "ok.txt").write_text("ok")
    report = importers.import_folder(store, "p", bad)
    reasons = dict(report.errors)
    assert "truncated or corrupt" in reasons["pair broken"] and "source_broken.jpg" in reasons["pair broken"]
    assert "empty file" in reasons["pair empty"]
    assert report.added == 1 and set(stored(store)) == {"good", "ok"}


def test_zip_import_and_traversal_refused(store, tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("set/source_a.jpg", jpeg(1))
        archive.writestr("set/edited_a.jpg", jpeg(2))
        archive.writestr("set/a.txt", "zip it")
        archive.writestr("__MACOSX/set/._source_a.jpg", b"junk")
    report = importers.import_zip(store, "p", good)
    assert report.added == 1 and stored(store)["a"]["instruction"] == "zip it" and not report.unmatched
    for evil in ("../escape.jpg", "/etc/passwd", "set/../../x.jpg"):
        path = tmp_path / "evil.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("source_b.jpg", jpeg(1))
            archive.writestr(evil, jpeg(2))
        with pytest.raises(ValueError, match="outside the archive"):
            importers.import_zip(store, "p", path)
    assert store.pairs.count("p") == 1


def test_several_files_and_a_single_pair(store, tmp_path):
    folder = tmp_path / "uploads"
    write_pair(folder, "a/source_1.jpg", "b/edited_1.jpg", seed=1)
    (folder / "c").mkdir()
    (folder / "c" / "1.txt").write_text("uploaded")
    report = importers.import_files(store, "p", [folder / "a/source_1.jpg", folder / "b/edited_1.jpg",
                                                  folder / "c/1.txt"])
    assert report.added == 1 and stored(store)["1"]["instruction"] == "uploaded"
    write_pair(folder, "s.jpg", "t.jpg", seed=7)
    single = importers.import_pair(store, "p", folder / "s.jpg", folder / "t.jpg", "one pair", "mine")
    assert single.added == 1 and stored(store)["mine"]["instruction"] == "one pair"


def _metadata_folder(tmp_path, rows, name="metadata_edit.csv"):
    folder = tmp_path / "ds"
    for n in range(len(rows)):
        write_pair(folder, f"images/source_{n}.jpg", f"images/edited_{n}.jpg", seed=n)
    if name.endswith(".csv"):
        lines = ["image,edit_image,prompt"] + [",".join(r) for r in rows]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_csv_in_diffsynth_convention_is_read_as_is(store, tmp_path):
    rows = [(f"images/edited_{n}.jpg", f"images/source_{n}.jpg", f"edit {n}") for n in range(2)]
    folder = _metadata_folder(tmp_path, rows)
    report = importers.import_metadata(store, "p", folder / "metadata_edit.csv")
    assert report.added == 2 and not report.notes
    pair = stored(store)["0"]
    assert pair["source_hash"] != pair["target_hash"]
    assert (store.project_dir("p") / pair["target_path"]).read_bytes() == (folder / "images/edited_0.jpg").read_bytes()


def test_csv_in_the_seed_readme_convention_is_swapped_and_said(store, tmp_path):
    rows = [(f"images/source_{n}.jpg", f"images/edited_{n}.jpg", f"edit {n}") for n in range(2)]
    folder = _metadata_folder(tmp_path, rows)
    report = importers.import_metadata(store, "p", folder / "metadata_edit.csv")
    assert report.added == 2 and "swapped" in report.notes[0]
    pair = stored(store)["0"]
    assert (store.project_dir("p") / pair["target_path"]).read_bytes() == (folder / "images/edited_0.jpg").read_bytes()
    assert (store.project_dir("p") / pair["source_path"]).read_bytes() == (folder / "images/source_0.jpg").read_bytes()


def test_csv_rows_with_missing_files_are_reported(store, tmp_path):
    rows = [("images/edited_0.jpg", "images/source_0.jpg", "ok"), ("images/nope.jpg", "images/source_1.jpg", "x")]
    folder = _metadata_folder(tmp_path, rows)
    report = importers.import_metadata(store, "p", folder / "metadata_edit.csv")
    assert report.added == 1 and report.errors == [("metadata_edit.csv row 2",
                                                    f"not found in {folder}: images/nope.jpg")]


def test_diffsynth_jsonl_with_2509_lists(store, tmp_path):
    folder = _metadata_folder(tmp_path, [None] * 4, name="metadata.jsonl")
    records = [
        {"image": "images/edited_0.jpg", "edit_image": ["images/source_0.jpg", "images/source_1.jpg",
                                                        "images/source_2.jpg"], "prompt": "combine"},
        {"image": "images/edited_1.jpg", "edit_image": "images/source_1.jpg", "prompt": "single"},
        {"image": "images/edited_2.jpg", "edit_image": ["images/source_0.jpg"] * 4, "prompt": "too many"},
    ]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    report = importers.import_metadata(store, "p", folder / "metadata.jsonl")
    pairs = stored(store)
    assert report.added == 2
    assert len(pairs["0"]["extra_sources"]) == 2 and pairs["1"]["extra_sources"] == []
    rows = dict(report.errors)
    assert "at most 3" in rows["metadata.jsonl line 3"] and "not valid JSON" in rows["metadata.jsonl line 4"]
    (folder / "metadata.json").write_text(json.dumps(records[:2]))
    again = importers.import_metadata(store, "p", folder / "metadata.json")
    assert again.added == 0 and again.already_present == 2


def test_musubi_jsonl_is_read(store, tmp_path):
    folder = _metadata_folder(tmp_path, [None], name="x.jsonl")
    record = {"image_path": str(folder / "images/edited_0.jpg"),
              "control_path": str(folder / "images/source_0.jpg"), "caption": "absolute paths"}
    (folder / "m.jsonl").write_text(json.dumps(record) + "\n")
    assert importers.import_metadata(store, "p", folder / "m.jsonl").added == 1
    assert store.pairs.page("p")[0]["instruction"] == "absolute paths"


def images_on_disk(store) -> set[str]:
    folder = store.project_dir("p")
    return {p.relative_to(folder).as_posix() for p in (folder / "images").rglob("*") if p.is_file()}


def test_deleting_pairs_removes_the_images_no_other_pair_uses(store, tmp_path):
    folder = tmp_path / "pairs"
    write_pair(folder, "source_1.jpg", "edited_1.jpg", seed=1)
    write_pair(folder, "source_2.jpg", "edited_2.jpg", seed=2)
    (folder / "source_2.jpg").write_bytes((folder / "source_1.jpg").read_bytes())  # shared source
    importers.import_folder(store, "p", folder)
    one, two = stored(store)["1"], stored(store)["2"]
    assert one["source_path"] == two["source_path"]
    assert images_on_disk(store) == {one["source_path"], one["target_path"], two["target_path"]}

    store.pairs.delete("p", [one["id"]])
    assert images_on_disk(store) == {two["source_path"], two["target_path"]}  # shared one stays
    store.pairs.delete("p", [two["id"]])
    assert images_on_disk(store) == set()
    assert importers.import_folder(store, "p", folder).added == 2  # written again
    assert images_on_disk(store) == {one["source_path"], one["target_path"], two["target_path"]}


def test_a_delete_racing_an_import_leaves_no_pair_without_its_image(store, tmp_path):
    folder = tmp_path / "pairs"
    write_pair(folder, "source_1.jpg", "edited_1.jpg", seed=1)
    importers.import_folder(store, "p", folder)
    old = stored(store)["1"]
    (folder / "1.txt").write_text("the same images, another instruction")

    def delete_old_pair(done, total):
        # The new row reused the stored files and is not inserted yet: the old pair goes now.
        store.pairs.delete("p", [old["id"]])

    report = importers.import_folder(store, "p", folder, progress=delete_old_pair)
    assert report.added == 0 and "deleted" in report.errors[0][1]
    assert store.pairs.count("p") == 0 and images_on_disk(store) == set()
