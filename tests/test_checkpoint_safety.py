"""A run survives kills and broken disks around its saves (issue 19, defects 3, 7, 9, 10).

Real trainer runs of the demo model (forked from one server, as in test_fault_injection.py);
the fault points of studio/trainer/faults.py land a kill, or a pause in which the test breaks
the output folder, inside an exact window."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from studio.trainer import run_files, steplog
from tests.test_fault_injection import dataset, forks, trainer_argv  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow  # whole training runs: not in make test-fast

ARGS = ["--max_steps", 4, "--save_steps", 2, "--sample_steps", 0]


@pytest.fixture(scope="module")
def train(forks, demo_model, dataset):
    def train(out, *args, **extra_env) -> tuple[int, str]:
        """The trainer's exit status (-9: killed) and its output."""
        log = out.with_name(f"{out.name}.log")
        code = forks.run(log, trainer_argv(demo_model, dataset, out, *args), **extra_env)
        return code, log.read_text()
    return train


def steps(out, name=run_files.METRICS) -> list[int]:
    return [r["step"] for r in steplog.read(out / name)]


def files(out) -> dict:
    """The run's files and their contents, but for the trainer's log and error."""
    return {p.name: p.read_bytes() for p in out.iterdir()
            if p.is_file() and p.name not in (run_files.LOG, run_files.ERROR)}


# -- defect 3: a kill inside the state swap ------------------------------------------------

@pytest.fixture(scope="module")
def swap_killed(train, tmp_path_factory):
    """A run killed while it swaps in step 4's resume state, then resumed: (output, log)."""
    out = tmp_path_factory.mktemp("runs") / "swap"
    code, log = train(out, *ARGS, STUDIO_FAULT_AT="state-written:4")
    assert code == -signal.SIGKILL, log[-3000:]
    assert steps(out) == [1, 2, 3, 4]
    code, log = train(out, *ARGS, "--resume")
    assert code == 0, log[-3000:]
    return out, log


def test_a_kill_inside_the_state_swap_resumes_from_the_state_before_it(swap_killed):
    out, log = swap_killed
    assert "resumed at step 2 of 4" in log
    assert steps(out) == [1, 2, 3, 4]
    assert steps(out, run_files.VALIDATION) == [0, 2, 4]
    # The last two states are kept; the pointer names the newest.
    assert run_files.states(out) == [run_files.state_dir(out, 2), run_files.state_dir(out, 4)]
    assert run_files.current_state(out) == run_files.state_dir(out, 4)


def test_a_run_without_its_state_refuses_to_train_over_its_checkpoints(swap_killed, train,
                                                                        tmp_path):
    out = tmp_path / "lost"
    shutil.copytree(swap_killed[0], out)
    for name in ("states", "resume.json", "resume"):  # the states are gone, whatever the layout
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).unlink(missing_ok=True)
    before = files(out)

    # As the job manager launches a run it finds no state for: without --resume.
    code, log = train(out, *ARGS)
    assert code == 2 and "holds checkpoints up to step 4" in log, log[-3000:]
    assert files(out) == before


def test_a_redone_step_replaces_its_row_and_keeps_the_later_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3, 4):
        steplog.write(path, {"step": step, "loss": float(step)})
    steplog.write(path, {"step": 2, "loss": 20.0})  # a resume from step 1 redoes step 2
    assert [(r["step"], r["loss"]) for r in steplog.read(path)] == [(1, 1.0), (2, 20.0), (3, 3.0),
                                                                   (4, 4.0)]
    with path.open("a") as f:  # a kill in the middle of a line
        f.write('{"step": 5, "lo')
    steplog.write(path, {"step": 5, "loss": 5.0})
    assert path.read_text().endswith('{"step": 4, "loss": 4.0}\n{"step": 5, "loss": 5.0}\n')


def test_current_state_is_the_pointers_else_the_newest_complete_else_a_legacy_one(tmp_path):
    def state(name, step):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
        return tmp_path / name

    assert run_files.current_state(tmp_path) is None
    old = state(".resume.old", 0)  # a kill inside the old layout's swap left no resume/
    assert run_files.current_state(tmp_path) == old
    first = state("states/step-000009", 9)
    newest = state("states/step-000010", 10)
    (tmp_path / "states/step-000011").mkdir()  # incomplete: no state.json yet
    assert run_files.current_state(tmp_path) == newest
    run_files.point_to(tmp_path, first)
    assert run_files.current_state(tmp_path) == first
    shutil.rmtree(first)  # a pointer to nothing falls back too
    assert run_files.current_state(tmp_path) == newest


# -- defect 7: validation and samples a kill left out ----------------------------------------

def test_what_kills_left_unrecorded_is_filled_in_at_the_next_start(train, tmp_path):
    out = tmp_path / "run"
    args = ["--max_steps", 4, "--save_steps", 2, "--sample_inference_steps", 2]
    code, log = train(out, *args, STUDIO_FAULT_AT="samples:4")
    assert code == -signal.SIGKILL, log[-3000:]
    assert steps(out, run_files.VALIDATION) == [0, 2, 4]
    assert not (out / "samples/step-000004").exists()
    assert list((out / "samples").glob(".*.partial"))
    (out / ".step-000004.safetensors.k1ll3d.tmp").write_bytes(b"")  # as an earlier kill leaves
    # An older checkpoint lost its validation row and its samples too.
    rows = steplog.read(out / run_files.VALIDATION)
    (out / run_files.VALIDATION).write_text("".join(json.dumps(r) + "\n" for r in rows
                                                    if r["step"] != 2))
    sample_2 = np.asarray(Image.open(out / "samples/step-000002/v.png"), dtype=np.int16)
    shutil.rmtree(out / "samples/step-000002")

    code, log = train(out, *args, "--resume")
    assert code == 0 and "nothing to do" in log, log[-3000:]
    assert steplog.read(out / run_files.VALIDATION) == sorted(rows, key=lambda r: r["step"])
    for step in (2, 4):
        index = json.loads((out / f"samples/step-{step:06d}/samples.json").read_text())
        assert index["step"] == step
    redone = np.asarray(Image.open(out / "samples/step-000002/v.png"), dtype=np.int16)
    assert np.abs(redone - sample_2).max() <= 1  # from step 2's LoRA file, not the live one
    assert not list(out.glob(".*.tmp")) and not list((out / "samples").glob(".*"))


# -- defect 9: the trainer's own error, and a disk check before each save --------------------

def test_a_disk_too_full_for_a_save_fails_before_writing_and_says_so(train, tmp_path):
    out = tmp_path / "full"
    code, log = train(out, *ARGS, STUDIO_FAULT_FREE_MB="0.01")
    assert code == 2, log[-3000:]
    error = run_files.read_error(out)
    assert re.fullmatch(rf"disk full: need \d+\.\d MB at {re.escape(str(out))} \(0\.0 MB free\)",
                        error), error
    assert not list(out.glob("*.safetensors")) and not list(out.glob("states/*"))


def test_an_unwritable_output_folder_is_reported_on_stderr(forks, demo_model, dataset, tmp_path):
    """Even root cannot write into a folder that has become a file (chmod would not stop root);
    error.json cannot be written there either, so the error goes to stderr behind the prefix."""
    out, marker, stderr = tmp_path / "out", tmp_path / "marker", tmp_path / "stderr"
    forks.start(stderr, trainer_argv(demo_model, dataset, out, *ARGS),
                STUDIO_FAULT_AT="before-save:2", STUDIO_FAULT_ACTION="pause",
                STUDIO_FAULT_MARKER=str(marker))
    forks.paused(marker)  # the trainer waits at the fault point
    out.rename(tmp_path / "moved")
    out.write_text("not a folder")
    marker.unlink()
    assert forks.wait() == 1, stderr.read_text()[-3000:]
    line = run_files.fatal_line(stderr.read_text().splitlines())
    assert line and line.startswith("NotADirectoryError") and str(out) in line, stderr.read_text()
    assert "Traceback" in (tmp_path / "moved" / run_files.LOG).read_text()


# -- defect 10: files as readable as any other ------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_lora_and_cache_files_follow_the_umask(demo_model, tmp_path, umask, mode):
    from diffusers import QwenImageTransformer2DModel

    from studio.trainer.cache import EncodedCache
    from studio.trainer.lora_io import add_lora, save_lora

    transformer = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer")
    add_lora(transformer, 4, 4.0, "to_q")
    cache = EncodedCache(tmp_path / "cache", "fp", {})
    previous = os.umask(umask)
    try:
        save_lora(tmp_path / "a.safetensors", transformer, 4, 4.0)
        cache.save("ab" * 32, {"x": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == mode
    assert cache.path("ab" * 32).stat().st_mode & 0o777 == mode
