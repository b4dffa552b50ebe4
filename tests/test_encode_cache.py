"""The project's encode cache (studio/jobs/encode_cache.py): counted for a model and settings,
filled before any run (the Dataset tab, `dataset encode`), pruned and cleared."""
from pathlib import Path

import pytest
import torch

from studio.cli import main as cli
from studio.dataset.export import export_dataset
from studio.dataset.instructions import set_instruction
from studio.dataset.synthetic_pairs import add_synthetic_pairs
from studio.engine.model_folder import inspect_model_folder
from studio.jobs import encode_cache, launch
from studio.store import Store
from studio.trainer import run_files
from studio.trainer.args import parse_args
from studio.trainer.cache import EncodedCache, entry_files, keys_for
from studio.trainer.data import Pair, load_pairs, load_validation_pairs
from studio.trainer.encoding import encoded_source
from tests.test_dataset_tab import serve_dataset_tab

# 64x64 targets, the edit image kept at that size: seconds per encode.
FAST = {"max_pixels": 4096, "edit_image_auto_resize": False}
FAST_FLAGS = ["--max-pixels", "4096", "--no-edit-image-auto-resize"]


def fast_options(model) -> launch.TrainOptions:
    return encode_cache.encoding_options(str(model), "Demo on CPU", **FAST)


def run_trainer_encoding(store, project, opts, folder: Path) -> None:
    """The encoding part of a run with `opts`, in this process: the trainer's own keys and
    cache (it loads the encoders only when something is missing)."""
    dataset = folder / "dataset"
    export_dataset(store, project, dataset, overwrite=True)
    args = parse_args(launch.trainer_args(opts, dataset, folder / "output", False,
                                          encode_cache.cache_dir(store, project)))
    pairs = load_pairs(dataset) + load_validation_pairs(args)
    encoded_source(args, pairs, inspect_model_folder(Path(opts.model)), torch.device("cpu"),
                    torch.float32, False)


def entries(store, project) -> dict[str, int]:
    """key -> mtime of every entry in the project's cache."""
    return {Path(e.name).stem: e.stat().st_mtime_ns
            for root in encode_cache.cache_dir(store, project).glob("*")
            for e in entry_files(root)}


def the_cache(store, project, opts) -> EncodedCache:
    """The one model folder's cache for these settings, as recorded there."""
    (root,) = [d for d in encode_cache.cache_dir(store, project).iterdir() if d.is_dir()]
    (cache,) = encode_cache.matching(root, opts)
    return cache


def is_encoded(cache, store, project, row) -> bool:
    return cache.has(cache.key(encode_cache.stored_pair(store, project, row)))


def test_a_cache_records_its_settings_once_and_keys_as_the_trainer(tmp_path):
    (tmp_path / "t.png").write_bytes(b"target bytes")
    (tmp_path / "s.png").write_bytes(b"source bytes")
    pair = Pair(tmp_path / "t.png", (tmp_path / "s.png",), "make it blue", "1")
    a = EncodedCache(tmp_path / "root", "fp", {"max_pixels": 4096})
    b = EncodedCache(tmp_path / "root", "fp", {"max_pixels": 8192})
    EncodedCache(tmp_path / "root", "fp", {"max_pixels": 4096})  # the same settings again
    recorded = EncodedCache.recorded(tmp_path / "root")
    assert sorted(c.settings for c in recorded) == sorted([a.settings, b.settings])
    assert [c.described()["max_pixels"] for c in recorded if c.settings == b.settings] == [8192]
    # A recorded cache keys as the one that recorded it; one read of the images keys for all.
    assert keys_for(recorded, pair) == [c.key(pair) for c in recorded]
    assert sorted(keys_for([a, b], pair)) == sorted(c.key(pair) for c in recorded)
    assert len(set(keys_for([a, b], pair))) == 2
    a.save(a.key(pair), {"x": torch.zeros(1)})
    (a.path(a.key(pair)).parent / ".half.safetensors.tmp").write_bytes(b"")
    # Entries only: not the settings records, nor a temporary file.
    assert [Path(e.name).stem for e in entry_files(a.root)] == [a.key(pair)]


def test_count_follows_changes_and_deleting_pairs_drops_exactly_their_entries(demo_model, tmp_path):
    store = Store(tmp_path / "projects")
    store.create_project("p")
    add_synthetic_pairs(store, "p", 5)
    opts = fast_options(demo_model)
    assert encode_cache.status(store, "p", demo_model, opts) == {"encoded": 0, "pairs": 5, "bytes": 0}
    run_trainer_encoding(store, "p", opts, tmp_path / "run")
    counted = encode_cache.status(store, "p", demo_model, opts)
    assert counted["encoded"] == counted["pairs"] == 5 and counted["bytes"] > 0
    # The trainer said how far it got, in the file a pre-encode follows.
    assert run_files.read_progress(tmp_path / "run" / "output") == \
        {"phase": "encode", "done": 5, "total": 5, "cached": 0}
    # Other settings (the edit image at ~1 MP) have nothing encoded.
    other = encode_cache.encoding_options(str(demo_model), "Demo on CPU", max_pixels=4096,
                                          edit_image_auto_resize=True)
    assert encode_cache.status(store, "p", demo_model, other)["encoded"] == 0

    rows = list(store.pairs.iterate("p"))
    set_instruction(store, "p", rows[1]["id"], "a new instruction")
    assert encode_cache.status(store, "p", demo_model, opts)["encoded"] == 4
    changed = store.pairs.get("p", rows[1]["id"])
    cache = the_cache(store, "p", opts)
    assert [is_encoded(cache, store, "p", r) for r in [rows[0], changed, *rows[2:]]] == \
        [True, False, True, True, True]

    # Deleting through the Dataset tab's path: its entry goes with it, and only it.
    before = entries(store, "p")
    assert encode_cache.forget(store, "p", [rows[2]["id"]]) == 1
    store.pairs.delete("p", [rows[2]["id"]])
    assert len(entries(store, "p")) == len(before) - 1
    assert all(is_encoded(cache, store, "p", r) for r in [rows[0], *rows[3:]])

    # Deleted elsewhere: a prune drops its entry and the changed pair's old one, nothing else.
    store.pairs.delete("p", [rows[3]["id"]])
    kept = entries(store, "p")
    pruned = encode_cache.prune(store, "p")
    assert pruned["removed"] == 2 and pruned["kept"] == 2 and pruned["bytes"] > 0
    assert set(entries(store, "p")) < set(kept)
    assert all(is_encoded(cache, store, "p", r) for r in [rows[0], rows[4]])
    assert encode_cache.status(store, "p", demo_model, opts)["encoded"] == 2

    # Nothing is deleted under a running run, which loads its entries as it trains.
    run = store.runs.create("p", "r", str(tmp_path / "r"), {}, "cpu")
    store.runs.update(run["id"], status="running")
    with pytest.raises(ValueError, match="while a run"):
        encode_cache.clear(store, "p")
    assert encode_cache.forget(store, "p", [rows[0]["id"]]) == 0
    store.runs.update(run["id"], status="finished")

    on_disk = sum(f.stat().st_size for f in encode_cache.cache_dir(store, "p").rglob("*") if f.is_file())
    assert encode_cache.clear(store, "p") == on_disk > 0
    assert not encode_cache.cache_dir(store, "p").exists()
    assert encode_cache.status(store, "p", demo_model, opts) == {"encoded": 0, "pairs": 3, "bytes": 0}


def _wait_for_encoding(client, timeout=240):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (line, _timer) = client.predict("default", api_name="/dataset_encode_progress")
        if not line.startswith("Pre-encoding"):
            return line
        time.sleep(1)
    raise AssertionError("the pre-encode did not end")


@pytest.mark.slow  # two encoding processes
def test_pre_encode_in_the_tab_then_runs_and_the_cli_encode_only_what_is_new(
        demo_model, tmp_path, capsys):
    gen = serve_dataset_tab(tmp_path / "projects")
    client, store = next(gen)
    try:
        add_synthetic_pairs(store, "default", 4)
        settings = ["default", str(demo_model), "Demo on CPU", 4096, False]
        count = client.predict(*settings, api_name="/dataset_encode_count")
        assert count == "Encoded for demo: 0 of 4 pairs · 0.0 MB"
        started, _ = client.predict(*settings, api_name="/dataset_encode")
        assert started.startswith("Pre-encoding")
        assert _wait_for_encoding(client) == \
            "Pre-encoded: 4 of 4 pairs encoded, 0 were already cached."
        assert client.predict(*settings, api_name="/dataset_encode_count").startswith(
            "Encoded for demo: 4 of 4 pairs")

        # A run with the same settings finds every pair (the validation one too) encoded.
        encoded = entries(store, "default")
        run_trainer_encoding(store, "default", fast_options(demo_model), tmp_path / "run")
        assert entries(store, "default") == encoded

        # Two pairs more: `dataset encode` encodes those two alone.
        add_synthetic_pairs(store, "default", 6)
        cli_args = ["--projects-dir", str(store.root), "dataset"]
        capsys.readouterr()
        assert cli([*cli_args, "encode", "--project", "default", "--model", str(demo_model),
                    *FAST_FLAGS]) == 0
        assert "encoded 2 pair(s); 4 already cached (of 6 pairs)" in capsys.readouterr().out
        after = entries(store, "default")
        assert len(after) == 6 and all(after[k] == t for k, t in encoded.items())
        assert cli([*cli_args, "cache", "--project", "default", "--model", str(demo_model),
                    *FAST_FLAGS]) == 0
        assert "Encoded for demo: 6 of 6 pairs" in capsys.readouterr().out

        assert cli([*cli_args, "cache", "--project", "default", "--prune"]) == 0
        assert "removed 0 entries" in capsys.readouterr().out
        cleared = client.predict("default", api_name="/dataset_encode_clear")
        assert cleared.startswith("Encode cache cleared") and not entries(store, "default")
    finally:
        next(gen, None)
