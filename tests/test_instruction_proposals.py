"""Proposals on the demo model: written in the background, stored, reviewed, applied,
undone; a person's instruction kept; bad input, empty text and a cancel lose nothing."""
import json

import pytest

from studio.cli import main
from studio.dataset import importers, proposals
from studio.engine.instruction_writer import EmptyInstruction, InstructionWriter
from studio.jobs.instruction_writing import InstructionJob, WriteRequest
from studio.store import NotFoundError, Store
from tests.conftest import make_image

PERSON = "Make the sky blue and the grass green"


@pytest.fixture
def store(tmp_path):
    """Project p: two pairs without an instruction, one a person wrote, one whose stored
    target is then corrupted."""
    store = Store(tmp_path / "projects")
    store.create_project("p")
    for n, text in enumerate(["", "", PERSON, ""]):
        make_image(96, 64, n).save(tmp_path / f"s{n}.png")
        make_image(96, 64, n + 10).save(tmp_path / f"t{n}.png")
        importers.import_pair(store, "p", tmp_path / f"s{n}.png", tmp_path / f"t{n}.png", text,
                              sample_id=f"pair{n}")
    bad = store.pairs.find("p", "pair3")
    store.pairs.path("p", bad["target_path"]).write_bytes(b"\x89PNG broken")
    yield store
    store.close()


def request(demo_model, scope="missing", **fields):
    return WriteRequest("p", model=str(demo_model), scope=scope, device="cpu",
                        max_new_tokens=8, max_words=6, **fields)


def by_sample(store):
    return {p["sample_id"]: p for p in store.pairs.iterate("p")}


def test_proposals_are_stored_reviewed_applied_and_undone(store, demo_model):
    job = InstructionJob(store, request(demo_model, scope="all"))
    assert len(job.pair_ids) == 4
    run = job.run()
    assert run["status"] == "finished" and run["done"] == 4 and run["failed"] == 1
    assert run["prompt"] == request(demo_model).prompt and "own text encoder" in run["model"]
    assert any(n.startswith("pair3: images cannot be read") for n in run["notes"])
    pending = {p["sample_id"]: p for p in store.proposals.pending("p")}
    assert set(pending) == {"pair0", "pair1", "pair2"}
    assert all(0 < len(p["text"].split()) <= 6 for p in pending.values())
    assert by_sample(store)["pair0"]["instruction"] == ""  # nothing applied before review

    edited = proposals.accept(store, "p", {pending["pair0"]["id"]: "Turn the square red"})
    assert edited.accepted == ["pair0"]
    assert proposals.reject(store, "p", [pending["pair1"]["id"]]).rejected == ["pair1"]
    kept = proposals.accept_all(store, "p")  # pair2's text is a person's: kept
    assert kept.accepted == [] and "pair2: a person wrote" in kept.kept[0]
    pairs = by_sample(store)
    assert pairs["pair0"]["instruction"] == "Turn the square red"
    assert pairs["pair0"]["instruction_origin"] == "writer" and pairs["pair0"]["status"] == "ok"
    assert pairs["pair1"]["instruction"] == "" and pairs["pair2"]["instruction"] == PERSON
    assert store.proposals.count("p") == 1 and store.proposals.count("p", "rejected") == 1

    # Asked for, the person's text is replaced; undo puts it back with its origin.
    assert proposals.accept_all(store, "p", overwrite=True).accepted == ["pair2"]
    assert by_sample(store)["pair2"]["instruction"] == pending["pair2"]["text"]
    assert "back to" in proposals.undo(store, "p", pairs["pair2"]["id"])
    restored = by_sample(store)["pair2"]
    assert restored["instruction"] == PERSON and restored["instruction_origin"] == ""
    proposals.undo(store, "p", pairs["pair0"]["id"])
    assert by_sample(store)["pair0"]["instruction"] == "" and by_sample(store)["pair0"]["status"] == "error"
    assert "Nothing to undo" in proposals.undo(store, "p", pairs["pair0"]["id"])


def test_a_cancel_halfway_and_an_empty_generation_lose_nothing(store, demo_model, monkeypatch):
    real_write = InstructionWriter.write
    calls = []

    def write(self, sources, target, prompt, max_words=6, seed=0):
        calls.append(1)
        if len(calls) == 1:  # the first pair's generation comes back empty
            raise EmptyInstruction("the model generated no text for this pair")
        return real_write(self, sources, target, prompt, max_words, seed)

    monkeypatch.setattr(InstructionWriter, "write", write)
    job = InstructionJob(store, request(demo_model, scope="all"))
    run = job.run(progress=lambda done, total: done == 2 and job.cancel())
    assert run["status"] == "cancelled" and run["done"] == 2
    assert "cancelled after 2 of 4 pairs" in run["error"]
    assert run["notes"] == ["pair0: the model generated no text; no proposal"]
    assert [p["sample_id"] for p in store.proposals.pending("p")] == ["pair1"]
    # A second run's proposal for the same pair supersedes the first; nothing else is lost.
    InstructionJob(store, request(demo_model, scope="search", search="sky")).run()
    assert [p["sample_id"] for p in store.proposals.pending("p")] == ["pair1", "pair2"]


def test_the_cli_writes_a_review_file_and_applies_it(store, demo_model, tmp_path, capsys):
    out = tmp_path / "review.jsonl"
    base = ["--projects-dir", str(store.root), "dataset", "instructions", "--project", "p"]
    code = main(base + ["--write", "--model", str(demo_model), "--device", "cpu",
                        "--max-words", "5", "--dry-run", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "own text encoder" in printed and "nonsense" in printed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["sample_id"] for line in lines] == ["pair0", "pair1"]  # --missing, pair3 unreadable
    assert "pair3: images cannot be read" in printed
    assert by_sample(store)["pair0"]["instruction"] == ""  # a dry run applies nothing

    lines[0]["proposed"] = "Swap the colours"
    lines[1]["decision"] = "reject"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(base + ["--apply", str(out)]) == 0
    assert "1 accepted, 1 rejected" in capsys.readouterr().out
    assert by_sample(store)["pair0"]["instruction"] == "Swap the colours"
    assert main(base + ["--undo", "pair0"]) == 0
    assert by_sample(store)["pair0"]["instruction"] == ""


def test_a_bad_review_file_applies_nothing_and_names_the_line(store, tmp_path):
    pair0 = store.pairs.find("p", "pair0")
    first = store.proposals.add("p", None, pair0["id"], "Add a moon")
    out = tmp_path / "review.jsonl"
    out.write_text(json.dumps({"proposal_id": first, "proposed": "Add a moon", "decision": "accept"})
                   + "\n" + json.dumps({"proposal_id": first, "decision": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="line 2: decision must be one of"):
        proposals.apply_review_file(store, "p", out)
    assert store.pairs.find("p", "pair0")["instruction"] == ""
    out.write_text(json.dumps({"proposal_id": 999, "proposed": "x"}) + "\n")
    with pytest.raises(NotFoundError, match="no instruction proposal 999"):
        proposals.apply_review_file(store, "p", out)
    assert store.proposals.count("p") == 1
