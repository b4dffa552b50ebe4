"""Parquet shards read in place: the reader (files, bad rows, positions), the trainer's scan
and keys, a real training run that skips a corrupt row and resumes exactly, and attaching a
source to a project from the CLI."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from studio.dataset.parquet_rows import ParquetSource, RowReader, parquet_files
from studio.trainer import parquet_pairs
from tests.conftest import make_image
from tests.trainer_helpers import ACCELERATE, FAST, ROOT, env, free_port, lora, max_abs, max_diff

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CORRUPT, NO_PROMPT = 1, 4  # global row numbers of the two bad rows
SKIP_CORRUPT = "skipped shard-00.parquet row 1: source_image: truncated or corrupt PNG"
SKIP_NO_PROMPT = "skipped shard-01.parquet row 1: empty instruction"


def png(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    make_image(size, size, seed).save(buffer, "PNG")
    return buffer.getvalue()


def write_shards(folder: Path, shards: int = 2, rows: int = 3) -> Path:
    """UltraEdit-style shards, two row groups each; row CORRUPT has truncated source bytes,
    row NO_PROMPT no instruction."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        n = range(s * rows, (s + 1) * rows)
        pq.write_table(pa.table({
            "idx": list(n),
            "edit_prompt": [None if i == NO_PROMPT else f"make it brighter, {i}" for i in n],
            "source_image": pa.array([{"bytes": png(i)[:120] if i == CORRUPT else png(i), "path": None}
                                      for i in n], IMAGE),
            "edited_image": pa.array([{"bytes": png(i + 7), "path": None} for i in n], IMAGE),
        }), folder / f"shard-{s:02d}.parquet", row_group_size=2)
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("pq") / "shards")


def test_a_file_a_folder_and_a_glob_name_the_same_shards_in_path_order(shards, tmp_path):
    (shards / ".cache").mkdir(exist_ok=True)
    (shards / ".cache" / "hidden.parquet").write_bytes(b"not read")
    expected = [shards / "shard-00.parquet", shards / "shard-01.parquet"]
    assert parquet_files(shards) == expected
    assert parquet_files(shards / "shard-*.parquet") == expected
    assert parquet_files(str(shards) + "/**/*-01.parquet") == expected[1:]
    assert parquet_files(expected[0]) == expected[:1]
    with pytest.raises(FileNotFoundError, match="no parquet files"):
        parquet_files(tmp_path / "*.parquet")


def test_bad_rows_are_named_by_file_and_row_and_the_rest_are_checked_pairs(shards):
    source = ParquetSource(shards)
    assert source.total_rows == 6 and source.layouts == ["UltraEdit"]
    assert len(source.groups()) == 4  # 2 + 2 row groups: read one at a time
    rows = list(source.rows())
    bad = {r.where: r.problem for r in rows if r.problems}
    assert list(bad) == ["shard-00.parquet row 1", "shard-01.parquet row 1"]
    assert "source_image: truncated or corrupt PNG" in bad["shard-00.parquet row 1"]
    assert bad["shard-01.parquet row 1"] == "empty instruction"
    good = [r for r in rows if not r.problems]
    assert [r.sample_id for r in good] == ["0", "2", "3", "5"]  # the idx column
    assert good[0].sizes == {"source": (64, 64), "target": (64, 64)}


def test_explicit_columns_and_a_layout_it_cannot_tell(tmp_path):
    pq.write_table(pa.table({"a": [png(1)], "b": [png(2)], "words": ["mapped"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="c.parquet: .*--parquet_columns"):
        ParquetSource(tmp_path, flag="--parquet_columns")
    row, = ParquetSource(tmp_path, "source=a,target=b,prompt=words").rows()
    assert not row.problems and row.prompt == "mapped" and row.sample_id == "c_0"


def test_the_reader_gives_the_scanned_bytes_forward_and_back(shards):
    source = ParquetSource(shards)
    scanned = {(r.shard, r.row): r for r in source.rows(check=False)}
    reader = RowReader(source)
    for position in [(0, 0), (0, 2), (1, 2), (1, 0), (0, 1)]:  # across groups, files, backwards
        got = reader.row(*position)
        assert (got.images, got.prompt) == (scanned[position].images, scanned[position].prompt)
    reader.close()


def test_scan_keys_are_the_cache_keys_of_the_same_files_and_shares_merge_in_order(shards, tmp_path):
    from studio.trainer.cache import EncodedCache
    from studio.trainer.data import Pair

    cache = EncodedCache(tmp_path / "cache", "fp", {"max_pixels": 4096})
    source = ParquetSource(shards)
    whole = parquet_pairs.scan(source, source.groups(), cache.key)
    assert whole.located.tolist() == [[0, 0], [0, 2], [1, 0], [1, 2]] and whole.scanned == 6
    # The key of a parquet pair is the key of the same images as files: one rule, one cache.
    (tmp_path / "t.png").write_bytes(png(0 + 7))
    (tmp_path / "s.png").write_bytes(png(0))
    on_disk = Pair(tmp_path / "t.png", (tmp_path / "s.png",), "make it brighter, 0", "x")
    assert whole.keys[0] == cache.key(on_disk)
    # Two processes' shares (every other row group), written and read back, merge into the
    # single scan: same pairs, keys and skipped rows in the same order.
    groups = source.groups()
    for rank in (0, 1):
        parquet_pairs.write_part(tmp_path / "scan" / parquet_pairs.part_name(rank, 2),
                                 parquet_pairs.scan(source, groups[rank::2], cache.key))
    assert parquet_pairs.complete_world(tmp_path / "scan") == 2
    merged = parquet_pairs.merge([parquet_pairs.read_part(tmp_path / "scan" / parquet_pairs.part_name(r, 2))
                                  for r in (0, 1)])
    assert merged.located.tolist() == whole.located.tolist() and merged.keys == whole.keys
    assert merged.skipped == whole.skipped and merged.scanned == 6
    pairs = parquet_pairs.ParquetPairs(source, merged, cached=True)
    assert len(pairs) == 4 and pairs[3].prompt == "make it brighter, 5"
    assert pairs[3].target.read_bytes() == png(5 + 7) and cache.key(pairs[3]) == whole.keys[3]


def test_the_trainer_flags_go_together():
    from studio.trainer.args import check_args

    assert check_args(["--dataset_parquet", "x/*.parquet"]).dataset_base_path is None
    for bad, message in ([[], "--dataset_base_path"],
                         [["--dataset_parquet", "x", "--dataset_metadata_path", "m.csv"], "replaces"],
                         [["--dataset_base_path", "d", "--parquet_columns", "source=a"], "goes with"],
                         [["--dataset_parquet", "x", "--parquet_columns", "nope=a"], "ROLE=COLUMN"]):
        with pytest.raises(ValueError, match=message):
            check_args(bad)


# -- the real program ----------------------------------------------------------------------

STEPS = 6
RUN = ["--max_steps", STEPS, "--save_steps", 3, "--seed", 3]
ONE_PROCESS = ["--gradient_accumulation_steps", 2]  # the global batch of 2 processes


def train(model: Path, parquet, out: Path, *extra, fault: str | None = None, launch=None):
    """The trainer on parquet alone (no --dataset_base_path), or under `accelerate launch
    *launch`; `fault` kills it there."""
    prog = ["-m", "studio.trainer", "--model_path", str(model), "--dataset_parquet", str(parquet),
            "--output_path", str(out), *FAST, *map(str, RUN), *map(str, extra)]
    cmd = [sys.executable, *prog] if launch is None else \
        [ACCELERATE, "launch", *launch, "--main_process_port", str(free_port()), *prog]
    extra_env = {"STUDIO_FAULT_AT": fault} if fault else {}
    if launch:
        extra_env["ACCELERATE_USE_CPU"] = "1"
    proc = subprocess.run(cmd, cwd=ROOT, env=env(**extra_env), capture_output=True, text=True,
                          timeout=240)
    if fault is None and proc.returncode != 0:
        raise AssertionError(f"trainer failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def whole(demo_model, shards, tmp_path_factory):
    """An uninterrupted run from a glob."""
    out = tmp_path_factory.mktemp("runs") / "whole"
    train(demo_model, shards / "*.parquet", out, *ONE_PROCESS)
    return out


@pytest.mark.slow
def test_a_parquet_run_skips_bad_rows_by_name_and_resumes_exactly(demo_model, shards, whole, tmp_path):
    log = (whole / "train.log").read_text()
    assert SKIP_CORRUPT in log and SKIP_NO_PROMPT in log
    assert "4 pairs, 2 of 6 rows skipped" in log and "no validation pairs" in log
    steps = [json.loads(line)["step"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert max_abs(lora(whole / "final.safetensors")) > 0

    # From the folder, killed right after the step-3 save, then resumed.
    stopped = tmp_path / "stopped"
    killed = train(demo_model, shards, stopped, *ONE_PROCESS, fault="after-saved:3")
    assert killed.returncode != 0 and not (stopped / "final.safetensors").exists()
    resumed = train(demo_model, shards, stopped, *ONE_PROCESS, "--resume")
    assert "resumed at step 3" in resumed.stderr
    assert "rows scanned before" in resumed.stderr  # the first try's scan, not a second one
    a, b = lora(stopped / "final.safetensors"), lora(whole / "final.safetensors")
    assert max_diff(a, b) <= 1e-6 * max_abs(b)


@pytest.mark.slow
def test_two_processes_share_the_scan_and_train_the_same_lora(demo_model, shards, whole, tmp_path):
    out = tmp_path / "ddp"
    proc = train(demo_model, shards, out, launch=["--multi_gpu", "--num_processes", "2"])
    assert "rank 0 scanned 4 rows of 2 row group(s)" in proc.stderr
    assert "rank 1 scanned 2 rows of 2 row group(s)" in proc.stderr  # every other row group
    assert sorted(p.name for p in out.rglob("part-*.npz")) == ["part-0-of-2.npz", "part-1-of-2.npz"]
    assert "rank 1 encoded its 2 pair(s)" in proc.stderr
    a, b = lora(out / "final.safetensors"), lora(whole / "final.safetensors")
    assert max_diff(a, b) < 1e-4 * max_abs(b)


# -- the studio side -----------------------------------------------------------------------

def test_attach_sample_source_and_the_trainer_flags_from_the_cli(shards, tmp_path, capsys):
    from studio.cli import main
    from studio.jobs.sources import trainer_source_args
    from studio.store import Store
    from studio.trainer.args import check_args

    base = ["--projects-dir", str(tmp_path / "projects")]
    assert main([*base, "project", "create", "p"]) == 0
    store = Store(tmp_path / "projects")
    assert trainer_source_args(store, "p") is None
    capsys.readouterr()

    assert main([*base, "dataset", "attach", "--project", "p", "--parquet", str(shards / "*.parquet")]) == 0
    out = capsys.readouterr()
    assert "2 file(s), 6 rows, UltraEdit layout" in out.out
    assert "4 can train, 2 cannot" in out.out
    assert "shard-00.parquet row 1: source_image: truncated" in out.out
    assert "you cannot:" in out.out and "edit, delete" in out.out
    assert "counting rows" in out.err and "2/2" in out.err  # the progress bar, per file

    assert main([*base, "dataset", "rows", "--project", "p", "--n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shard-00.parquet row 0\tid 0\tsource 64×64  target 64×64")
    assert '"make it brighter, 0"' in lines[0]
    assert lines[1].startswith("shard-00.parquet row 1") and "cannot train" in lines[2]

    flags = trainer_source_args(store, "p")
    assert flags == ["--dataset_parquet", str(shards / "*.parquet")]
    assert check_args(["--dataset_base_path", "exported", *flags]).dataset_parquet == flags[1]

    # Columns it cannot tell: refused, and the attached source stays as it was.
    (tmp_path / "other").mkdir()
    pq.write_table(pa.table({"x": [png(1)], "y": [png(2)], "z": ["t"]}), tmp_path / "other" / "o.parquet")
    assert main([*base, "dataset", "attach", "--project", "p", "--parquet", str(tmp_path / "other")]) == 2
    assert "--columns" in capsys.readouterr().err
    assert main([*base, "dataset", "attach", "--project", "p", "--parquet", str(tmp_path / "other"),
                 "--columns", "source=x,target=y,prompt=z"]) == 0
    assert trainer_source_args(store, "p")[-2:] == ["--parquet_columns", "source=x,target=y,prompt=z"]

    assert main([*base, "dataset", "detach", "--project", "p"]) == 0
    assert trainer_source_args(store, "p") is None


@pytest.mark.slow
def test_a_project_with_only_an_attached_source_trains_through_the_job_manager(
        demo_model, shards, tmp_path):
    from studio.cli import main
    from studio.jobs.launch import TrainOptions
    from studio.jobs.presets import TRAIN_PRESETS
    from studio.jobs.manager import JobManager
    from studio.store import Store

    base = ["--projects-dir", str(tmp_path / "projects")]
    assert main([*base, "project", "create", "p"]) == 0
    assert main([*base, "dataset", "attach", "--project", "p", "--parquet", str(shards)]) == 0
    jobs = JobManager(Store(tmp_path / "projects"))
    opts = TrainOptions.from_dict({**TrainOptions().as_dict(), **TRAIN_PRESETS["Demo on CPU"],
                                   "model": str(demo_model), "max_steps": 2, "save_steps": 2})
    run = jobs.submit("p", opts)
    assert run["config"]["source_args"][:2] == ["--dataset_parquet", str(shards)]
    done = jobs.wait(run["id"], timeout=240)
    assert done["status"] == "finished", done["error"]
    log = (Path(done["run_dir"]) / "output" / "train.log").read_text()
    assert "skipped shard-00.parquet row 1" in log
    assert (Path(done["run_dir"]) / "output" / "final.safetensors").is_file()
