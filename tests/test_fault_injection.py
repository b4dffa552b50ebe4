"""The trainer killed at every phase of a checkpoint save, and its supervisor killed inside a
save and inside validation: a run resumed after each kill ends as an uninterrupted one does,
with the same LoRA files, metrics for steps 1..N once each, a validation row for every
checkpoint and the same sample edits (issue 19). The fault points of studio/trainer/faults.py
land each kill inside its window.

The trainer kills run the trainer's `main` in processes forked from one server that has
imported torch and diffusers once (`Forks`): the same program and a real SIGKILL, in a second
a start instead of eight. The supervisor kills go through the real job manager, supervisor
and accelerate launcher, and run last."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from studio.jobs import launch
from studio.trainer import process_group, run_files, samples, steplog
from tests.test_jobs import options, trainer_pids, wait_for
from tests.trainer_helpers import (FAST, ROOT, add_validation_pairs, env, lora, make_dataset,
                                   max_abs, max_diff)

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast

# Checkpoints at every step; sample edits at the last one only (each start's first edit costs
# seconds: the VAE encodes the input at the pipeline's 1 MP).
STEPS = 7
ARGS = ["--max_steps", STEPS, "--save_steps", 1, "--sample_steps", STEPS,
        "--sample_inference_steps", 2]
# In the order a save goes (checkpoint.py), one step later each: every start but the first
# resumes from what the kill before it left.
TRAINER_KILLS = ["before-save:1", "state-written:2", "pointer-moved:3", "after-lora:4",
                 "after-saved:5", "validation:6", "samples:7"]

SERVER = """
import json, os, sys
from diffusers import QwenImageEditPipeline, QwenImageTransformer2DModel  # imported, not run
import accelerate
from studio.trainer.loop import main
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(job["env"])
        code = 1
        try:
            code = main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Forks:
    """Trainer starts forked from a server that imported everything once."""

    def __init__(self):
        self.server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=env(),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def start(self, log: Path, argv: list, **extra_env) -> None:
        """One trainer at a time: `wait` for it before the next."""
        self.log = log
        job = {"argv": [str(a) for a in argv], "env": extra_env, "log": str(log)}
        self.server.stdin.write(json.dumps(job) + "\n")
        self.server.stdin.flush()

    def wait(self, timeout: float = 180) -> int:
        """The trainer's exit status (-9: killed)."""
        ready, _, _ = select.select([self.server.stdout], [], [], timeout)
        assert ready, f"no trainer exit after {timeout} s; its log:\n{self.log.read_text()[-3000:]}"
        return int(self.server.stdout.readline())

    def paused(self, marker: Path, timeout: float = 180) -> int:
        """Wait until the trainer started last sits at its fault point (it wrote `marker`,
        STUDIO_FAULT_ACTION=pause); its pid. Fails at once, with its log, if it ended first."""
        ended = lambda: bool(select.select([self.server.stdout], [], [], 0)[0])  # noqa: E731
        wait_for(lambda: marker.exists() or ended(), timeout=timeout, what="the trainer's pause",
                 interval=0.05)
        assert not ended(), f"it ended before its fault point:\n{self.log.read_text()[-3000:]}"
        (trainer,) = psutil.Process(self.server.pid).children()
        return trainer.pid

    def run(self, log: Path, argv: list, **extra_env) -> int:
        self.start(log, argv, **extra_env)
        return self.wait()

    def train(self, model, data, out: Path, *args, log: str = "run", **extra_env) -> int:
        """The trainer with the fast flags; its output in OUT.LOG.log beside OUT."""
        argv = trainer_argv(model, data, out, *args)
        return self.run(out.with_name(f"{out.name}.{log}.log"), argv, **extra_env)

    def close(self):
        self.server.kill()
        self.server.wait()


def trainer_argv(model, data, out: Path, *args) -> list:
    return ["--model_path", model, "--dataset_base_path", data, "--output_path", out, *FAST, *args]


@pytest.fixture(scope="module")
def forks():
    server = Forks()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return validation_dataset(tmp_path_factory.mktemp("data") / "ds")


def validation_dataset(folder: Path) -> Path:
    """Two training pairs and one validation pair."""
    return add_validation_pairs(make_dataset(folder, n=2), ["v"], seed=7, prompt="Make it night")


def assert_same_run(out: Path, base: Path, steps: int) -> None:
    """`out` ended as the uninterrupted `base`: LoRA files, metrics, validation, samples. (It
    may hold one LoRA file more per stop: a stop saves where it stops.)"""
    assert set(run_files.checkpoint_steps(base)) <= set(run_files.checkpoint_steps(out))
    for name in [run_files.FINAL, *(p.name for p in run_files.checkpoint_steps(base).values())]:
        a, b = lora(out / name), lora(base / name)
        assert max_diff(a, b) <= 1e-6 * max_abs(b), name
    metrics = steplog.read(out / run_files.METRICS)
    assert [r["step"] for r in metrics] == list(range(1, steps + 1))
    assert [r["loss"] for r in metrics] == pytest.approx(
        [r["loss"] for r in steplog.read(base / run_files.METRICS)], rel=1e-5)
    rows, expected = (steplog.read(p / run_files.VALIDATION) for p in (out, base))
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    assert [r["val_loss"] for r in rows] == pytest.approx([r["val_loss"] for r in expected], rel=1e-5)
    edits = [(s["step"], s["sample_id"]) for s in samples.list_samples(out)]
    assert edits == [(s["step"], s["sample_id"]) for s in samples.list_samples(base)]
    for got, want in zip(samples.list_samples(out), samples.list_samples(base)):
        a, b = (np.asarray(Image.open(s["output"]), dtype=np.int16) for s in (got, want))
        assert np.abs(a - b).max() <= 1, got["output"]
    # Two states, the pointer on the last step's; nothing half-made left.
    assert len(run_files.states(out)) == 2
    assert run_files.current_state(out) == run_files.state_dir(out, steps)
    assert not [p for p in out.rglob(".*")], "leftovers of a kill"


def test_the_trainer_killed_at_every_phase_of_a_save_ends_as_an_uninterrupted_run(
        forks, demo_model, dataset, tmp_path):
    base, out, marker = tmp_path / "base", tmp_path / "killed", tmp_path / "marker"
    assert forks.train(demo_model, dataset, base, *ARGS) == 0
    resume = []
    for at in TRAINER_KILLS:
        code = forks.train(demo_model, dataset, out, *ARGS, *resume, log=at, STUDIO_FAULT_AT=at,
                           STUDIO_FAULT_MARKER=str(marker))
        assert code == -signal.SIGKILL, out.with_name(f"killed.{at}.log").read_text()[-3000:]
        assert marker.read_text() == at.split(":")[0]
        marker.unlink()
        resume = ["--resume"]
    assert forks.train(demo_model, dataset, out, *ARGS, "--resume") == 0
    assert "nothing to do" in out.with_name("killed.run.log").read_text()
    assert_same_run(out, base, STEPS)


# -- the supervisor ---------------------------------------------------------------------------

TRAINER_ARGS = launch.trainer_args  # the job manager's, before the test adds the fast flags


def test_the_supervisor_killed_inside_a_save_and_the_run_resumed_ends_the_same(
        jobs, demo_model, forks, groups, tmp_path, monkeypatch):
    """The trainer pauses at a fault point; the supervisor and the launcher are killed; the
    trainer, told by its parent-death signal, goes on once the test lets it and stops as on
    Stop. (SIGKILL to the launcher as well: a launcher that outlives the supervisor relays
    the stop itself and SIGKILLs the trainer after a grace period, a race with the clock;
    tests/test_run_liveness.py covers that path.)"""
    # The job manager's runs with the fast trainer flags (the Demo on CPU preset encodes the
    # edit images at 1 MP: seconds a step). Everything else is the real chain.
    monkeypatch.setattr(launch, "trainer_args", lambda *a, **k: [*TRAINER_ARGS(*a, **k), *FAST])
    opts = options(demo_model, max_steps=4, save_steps=2, sample_steps=0)  # samples: above
    marker = tmp_path / "marker"
    monkeypatch.setenv("STUDIO_FAULT_ACTION", "pause")
    monkeypatch.setenv("STUDIO_FAULT_MARKER", str(marker))
    run = None
    for at in ("state-written:2", "validation:4"):
        monkeypatch.setenv("STUDIO_FAULT_AT", at)
        run = jobs.submit("p", opts) if run is None else jobs.resume(run["id"])
        groups.append(run["pid"])  # a failing test leaves no paused trainer behind
        wait_for(marker.exists, what=f"the trainer at {at}")
        (trainer,) = trainer_pids(run)
        os.kill(psutil.Process(trainer).ppid(), signal.SIGKILL)  # the launcher
        os.kill(run["pid"], signal.SIGKILL)
        wait_for(lambda: process_group.members(run["pid"]) == [trainer],
                 what="the launcher and the supervisor to die")
        marker.unlink()  # the trainer goes on, its parent-death SIGTERM pending
        wait_for(lambda: not process_group.members(run["pid"]), what="the trainer to end")
        assert jobs.wait(run["id"], timeout=60)["status"] == "failed"
    monkeypatch.delenv("STUDIO_FAULT_AT")
    run = jobs.resume(run["id"])
    groups.append(run["pid"])
    finished = jobs.wait(run["id"], timeout=240)
    assert finished["status"] == "finished", finished["error"]

    folder = Path(run["run_dir"])
    base = tmp_path / "base"
    assert forks.run(tmp_path / "base.log",
                     launch.trainer_args(opts, folder / "dataset", base, resume=False)) == 0
    assert_same_run(folder / "output", base, 4)
    log = (folder / "output" / run_files.LOG).read_text()
    # A stop signalled inside a save is seen after the next step; at the last step, the run
    # ends there.
    assert "stopped by SIGTERM after step 3" in log and "done: 4 steps" in log
    assert log.count("resumed at step") == 2
