"""Sample ids from any script stay readable, and two names never become one id unnoticed."""
import json
import unicodedata

from studio.dataset import importers
from studio.dataset.export import export_dataset
from studio.paths import safe_stem
from studio.trainer.samples import file_names
from tests.dataset_helpers import store, write_pair  # noqa: F401 (fixture)

NAMES = ["ünïcödé_日本", "ünïcödé 日本", "ünïcödé/日本", "नमस्ते", "Ελληνικά", "a b", "a_b", "x"]


def test_letters_of_any_script_are_kept():
    assert safe_stem("ünïcödé_日本") == "ünïcödé_日本"
    assert safe_stem("नमस्ते दुनिया") == "नमस्ते_दुनिया"  # combining vowel signs stay
    # macOS writes file names decomposed: both spellings are one id.
    assert safe_stem(unicodedata.normalize("NFD", "café")) == safe_stem("café") == "café"
    assert safe_stem("../etc/passwd") == "etc_passwd"
    long = safe_stem("日本" * 200)
    assert len(long.encode()) <= 120 and long == "日本" * 20  # cut whole, not mid-character


def test_imported_ids_are_distinct_and_every_change_is_reported(store, tmp_path):
    folder = tmp_path / "data"
    records = []
    for i, name in enumerate(NAMES):
        write_pair(folder, f"s{i}.jpg", f"t{i}.jpg", seed=10 * i)
        records.append({"image": f"t{i}.jpg", "edit_image": f"s{i}.jpg", "prompt": f"edit {i}",
                        "sample_id": name})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records),
                                          encoding="utf-8")
    report = importers.import_metadata(store, "p", folder / "metadata.jsonl")
    assert report.added == len(NAMES), report.lines()
    by_prompt = {p["instruction"]: p["sample_id"] for p in store.pairs.page("p", page_size=50)}
    ids = [by_prompt[f"edit {i}"] for i in range(len(NAMES))]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "ünïcödé_日本" and ids[3] == "नमस्ते" and ids[4] == "Ελληνικά"
    # Every name that could not be kept as given is named in the report with what it became.
    changed = [(name, sid) for name, sid in zip(NAMES, ids) if name != sid]
    warnings = " ".join(message for _, message in report.warnings)
    assert changed
    for name, sid in changed:
        assert repr(name) in warnings and repr(sid) in warnings, (name, sid, warnings)
    # The ids survive the export as file names.
    out = export_dataset(store, "p", tmp_path / "out")
    assert (tmp_path / "out" / "images" / "edited_ünïcödé_日本.jpg").is_file(), out


def test_sample_file_names_never_collide():
    names = file_names(NAMES + ["a_b", "", ".."])
    assert len(set(names)) == len(names)
    assert names[0] == "ünïcödé_日本.png"
