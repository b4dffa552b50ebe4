import json

import pytest

from studio.cli import main
from studio.dataset.ingest import pair_key
from studio.dataset.instructions import set_instruction
from studio.store import SCHEMA_VERSION, Store
from tests.dataset_helpers import store, write_pair  # noqa: F401 (fixture)


def fake_rows(n, start=0):
    """Rows as the importer builds them, without images (paging does not read files)."""
    return [{"sample_id": f"s{i}", "source_path": f"images/s{i}.jpg", "target_path": f"images/t{i}.jpg",
             "instruction": f"instruction {i} {'cat' if i % 10 == 0 else 'dog'}", "split": "train",
             "source_hash": f"a{i}", "target_hash": f"b{i}", "pair_key": pair_key(f"a{i}", [], f"b{i}", ""),
             "source_width": 64, "source_height": 64, "target_width": 64, "target_height": 64,
             "issues": [], "status": "ok", "meta": {}} for i in range(start, start + n)]


def test_migration_adds_pair_columns_and_indexes(tmp_path):
    store = Store(tmp_path)
    assert store.version == SCHEMA_VERSION >= 2
    columns = store.db["pairs"].columns_dict
    assert {"source_hash", "target_hash", "pair_key", "status", "issues", "target_width"} <= set(columns)
    indexes = {i.name for i in store.db["pairs"].indexes}
    assert {"idx_pairs_project_page", "idx_pairs_key"} <= indexes


def test_paging_search_and_counts(store):
    inserted, present = store.pairs.add("p", fake_rows(120))
    assert (len(inserted), present) == (120, 0)
    assert [p["sample_id"] for p in store.pairs.page("p", page=2, page_size=50)] == [f"s{i}" for i in range(100, 120)]
    cats = store.pairs.page("p", search="CAT", page_size=5)
    assert [p["sample_id"] for p in cats] == ["s0", "s10", "s20", "s30", "s40"]
    assert store.pairs.count("p", search="cat") == 12 and store.pairs.count("p") == 120
    assert store.pairs.count("p", search="100%") == 0  # % is literal, not a wildcard


def test_adding_twice_adds_nothing_and_clashing_ids_get_suffixes(store):
    store.pairs.add("p", fake_rows(3))
    assert store.pairs.add("p", fake_rows(3))[1] == 3
    other = fake_rows(1, start=7)
    other[0]["sample_id"] = "s1"
    (row,), _ = store.pairs.add("p", other)
    assert row["sample_id"] == "s1_2"


def test_edit_instruction_split_delete(store):
    rows, _ = store.pairs.add("p", fake_rows(4))
    ids = [r["id"] for r in rows]
    updated = set_instruction(store, "p", ids[0], "")
    assert updated["status"] == "error" and updated["issues"][0]["message"] == "empty instruction"
    updated = set_instruction(store, "p", ids[0], 'say "hi", then =1+1')
    assert updated["status"] == "ok" and updated["instruction"] == 'say "hi", then =1+1'
    assert store.pairs.set_split("p", ids[:2], "validation") == 2
    assert store.pairs.count("p", split="validation") == 2
    with pytest.raises(ValueError):
        store.pairs.set_split("p", ids, "test")
    assert store.pairs.delete("p", [ids[3]]) == 1
    assert store.pairs.counts("p") == {"total": 3, "ok": 3, "warning": 0, "error": 0, "train": 1, "validation": 2}
    assert store.pairs.get("p", ids[3]) is None


def test_pairs_of_one_project_are_invisible_to_another(store):
    store.create_project("q")
    store.pairs.add("p", fake_rows(2))
    assert store.pairs.count("q") == 0 and store.pairs.page("q") == []
    (row,), _ = store.pairs.add("q", fake_rows(1))
    assert store.pairs.delete("p", [row["id"]]) == 0


def test_cli_import_list_samples_and_export(store, tmp_path, capsys):
    root = ["--projects-dir", str(store.root), "dataset"]
    folder = tmp_path / "pairs"
    write_pair(folder, "source_a.jpg", "edited_a.jpg", seed=1)
    (folder / "a.txt").write_text("from the cli")
    (folder / "source_b.jpg").write_bytes(b"not an image")
    (folder / "edited_b.jpg").write_bytes(b"")
    (folder / "b.txt").write_text("broken")
    assert main(root + ["import", "--project", "p", "--pairs", str(folder)]) == 1  # one bad row
    out = capsys.readouterr().out
    assert "1 pairs added" in out and "rejected: pair b: source_b.jpg: not an image" in out
    assert main(root + ["synthetic", "--project", "p", "--count", "2"]) == 0
    capsys.readouterr()
    assert main(root + ["list", "--project", "p", "--search", "cli"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0].split("\t")[-1]) == "from the cli" and lines[-1] == "page 1 of 1 (1 pairs)"
    assert main(root + ["list"]) == 0
    assert capsys.readouterr().out.startswith("p\t3 pairs\t1 validation")
    assert main(root + ["export", "--project", "p", "--out", str(tmp_path / "out"), "--format", "musubi"]) == 0
    assert (tmp_path / "out" / "metadata.jsonl").is_file()
    assert main(root + ["import", "--project", "nope", "--pairs", str(folder)]) == 2


def test_rewriting_many_instructions_at_once(store, capsys):
    from studio.dataset.instructions import Rewrite, rewrite_instructions

    rows, _ = store.pairs.add("p", fake_rows(12))  # instructions 'instruction N cat|dog'
    root = ["--projects-dir", str(store.root), "dataset", "instructions", "--project", "p"]
    assert main([*root, "--prefix", "sks, ", "--search", "cat", "--dry-run"]) == 0
    assert "2 instruction(s) would change" in capsys.readouterr().out  # s0 and s10
    assert store.pairs.get("p", rows[0]["id"])["instruction"] == "instruction 0 cat"

    assert main([*root, "--prefix", "sks, ", "--search", "cat"]) == 0
    assert main([*root, "--prefix", "sks, ", "--search", "cat"]) == 0  # a prefix goes on once
    assert "0 instruction(s) changed" in capsys.readouterr().out
    assert store.pairs.get("p", rows[10]["id"])["instruction"] == "sks, instruction 10 cat"
    assert store.pairs.get("p", rows[1]["id"])["instruction"] == "instruction 1 dog"

    # Replacing down to nothing makes the pair an error, as editing it by hand would.
    changes = rewrite_instructions(store, "p", Rewrite(find="instruction 3 dog", replace=""))
    assert changes == [("s3", "instruction 3 dog", "")]
    assert store.pairs.get("p", rows[3]["id"])["status"] == "error"
    with pytest.raises(ValueError, match="nothing to change"):
        Rewrite()


def test_holding_pairs_out_for_validation(store, capsys):
    from studio.dataset.split import hold_out, parse_count

    rows, _ = store.pairs.add("p", fake_rows(20))
    set_instruction(store, "p", rows[0]["id"], "")  # an error pair is never drawn
    assert parse_count("10%", 20) == 2 and parse_count("3", 20) == 3 and parse_count("1%", 20) == 1
    with pytest.raises(ValueError, match="percentage"):
        parse_count("some", 20)

    root = ["--projects-dir", str(store.root), "dataset", "split", "--project", "p"]
    assert main([*root, "--validation", "10%", "--seed", "7"]) == 0
    assert "held out 2 pair(s): now 18 for training, 2 for validation" in capsys.readouterr().out
    drawn = {p["id"] for p in store.pairs.page("p", split="validation")}
    assert rows[0]["id"] not in drawn

    other = Store(store.root / "other")  # the same seed draws the same pairs
    other.create_project("p")
    other_rows, _ = other.pairs.add("p", fake_rows(20))
    set_instruction(other, "p", other_rows[0]["id"], "")
    assert sorted(hold_out(other, "p", 2, seed=7)) == sorted(drawn)
    with pytest.raises(ValueError, match="nothing to train on"):
        hold_out(store, "p", 17)
