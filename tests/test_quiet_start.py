"""A program prints nothing the user did not cause. Where torchao (the int8 base's optional
library) is installed, transformers, diffusers, peft and accelerate import it as they load, and
with it torch's and diffusers' warnings; a program that does not quantize keeps it out
(engine/optional_torchao.py). The programs run as `python -m` runs them."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import make_image
from tests.trainer_helpers import FAST, ROOT, env, make_dataset

# A program's entry module, run as `python -m` runs it; then whether torchao was imported.
PROBE = """
import runpy, sys, types
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    print("exit", exc.code)
print("torchao imported:", isinstance(sys.modules.get("torchao"), types.ModuleType))
"""


def run_program(module: str, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, module, *map(str, argv)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=300)


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if "torchao" in line or "warning" in line.lower()]


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    assert "exit 0" in proc.stdout, proc.stderr[-3000:]
    assert "torchao imported: False" in proc.stdout
    assert noise(proc.stderr) == []


@pytest.mark.parametrize("module", ["studio", "studio.trainer"])
def test_help_is_quiet(module):
    assert_quiet(run_program(module, "--help"))


def test_a_training_program_without_int8_is_quiet(demo_model, tmp_path):
    # --encode_only loads the text encoder and the VAE (transformers and diffusers), quickly.
    data = make_dataset(tmp_path / "data", n=1)
    proc = run_program("studio.trainer", "--model_path", demo_model, "--dataset_base_path", data,
                       "--output_path", tmp_path / "out", "--encode_only", *FAST)
    assert_quiet(proc)
    assert noise((tmp_path / "out" / "train.log").read_text()) == []


def test_an_edit_without_int8_is_quiet(demo_model, tmp_path):
    # The editor the app serves, through the CLI: the whole pipeline loads and runs.
    make_image(64, 64).save(tmp_path / "in.png")
    proc = run_program("studio", "edit", "--model", demo_model, "--device", "cpu",
                       "--image", tmp_path / "in.png", "--prompt", "make it blue", "--steps", 2,
                       "--size", "64x64", "--out", tmp_path / "out.png")
    assert_quiet(proc)
    assert (tmp_path / "out.png").is_file()
