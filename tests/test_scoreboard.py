"""The run's scoreboard: real trainer runs on the demo model score their sample edits."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.trainer import scoreboard
from tests.conftest import SAMPLED_ARGS as ARGS, SAMPLED_IDS as IDS
from tests.trainer_helpers import lora, max_diff, run_trainer

pytestmark = pytest.mark.slow  # whole training runs: not in make test-fast


@pytest.fixture
def dataset(sampled_run):
    return sampled_run[0]


@pytest.fixture
def scored_run(sampled_run):
    """The shared run (tests/conftest.py), whose pairs edit one box of their source."""
    return sampled_run[1]


def _psnr(a_path, b_path) -> float:
    """The published formula, on the 8-bit files: 10 log10(1 / MSE) on a 0-1 scale."""
    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255 for p in (a_path, b_path))
    return 10 * math.log10(1 / float(((a - b) ** 2).mean()))


def test_one_row_per_checkpoint_and_validation_pair(scored_run, dataset):
    rows = scoreboard.read(scored_run)
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert [p["sample_id"] for p in row["pairs"]] == IDS
        assert row["preview"]["inference_steps"] == 2 and row["preview"]["cheap"] is True
        index = json.loads((scored_run / f"samples/step-{row['step']:06d}/samples.json").read_text())
        for pair, sample in zip(row["pairs"], index["samples"]):
            assert pair["psnr"] == pytest.approx(_psnr(sample["output"], sample["target"]), rel=1e-6)
            assert 0 <= pair["preserved_share"] <= 1 and -1 <= pair["ssim"] <= 1


def test_the_table_has_means_worst_pairs_and_the_validation_loss(scored_run):
    table = scoreboard.table(scored_run)
    assert [r["step"] for r in table] == [0, 2, 4]  # step 0: the validation loss before training
    assert table[0]["pairs"] == 0 and table[0]["val_loss"] is not None
    rows = {r["step"]: r for r in scoreboard.read(scored_run)}
    for entry in table[1:]:
        psnrs = [p["psnr"] for p in rows[entry["step"]]["pairs"]]
        assert entry["psnr"] == pytest.approx(sum(psnrs) / len(psnrs))
        assert entry["worst"]["psnr"] == IDS[int(np.argmin(psnrs))]
        assert entry["val_loss"] is not None
    best = scoreboard.best(table, "psnr")
    assert best == max(table[1:], key=lambda r: r["psnr"])["step"]
    assert scoreboard.best(table, "val_loss") == min(table, key=lambda r: r["val_loss"])["step"]


def test_a_restart_keeps_the_rows_and_scores_what_a_kill_left(scored_run, demo_model, dataset,
                                                               tmp_path):
    """Drop step 4's row (as a kill before scoring leaves it): resuming the finished run scores
    it again and leaves step 2's row as it was. On a copy: the run is shared."""
    scored_run = Path(shutil.copytree(scored_run, tmp_path / "copy"))
    path = scored_run / scoreboard.FILE
    kept = path.read_text().splitlines()
    path.write_text(kept[0] + "\n")
    assert scoreboard.unscored(scored_run) == [4]
    run_trainer(demo_model, dataset, scored_run, *ARGS, "--resume")
    again = path.read_text().splitlines()
    assert again[0] == kept[0]
    assert json.loads(again[1])["pairs"] == json.loads(kept[1])["pairs"]
    assert scoreboard.unscored(scored_run) == []


def test_a_few_step_lora_under_the_previews_leaves_training_as_it_was(scored_run, demo_model,
                                                                      dataset, tmp_path):
    """Previews with a LoRA stacked under the run's: the trained LoRA is bit for bit the
    plain run's (the preview adapter never trains nor is saved), the previews change, and
    the scoreboard says which settings scored."""
    few_step = scored_run / "step-000002.safetensors"  # any LoRA of this model will do
    out = tmp_path / "stacked"
    run_trainer(demo_model, dataset, out, *ARGS, "--sample_lora", few_step,
                "--sample_lora_strength", 1.5)
    for name in ("step-000002.safetensors", "final.safetensors"):
        assert max_diff(lora(out / name), lora(scored_run / name)) == 0.0
        assert set(lora(out / name)) == set(lora(scored_run / name))
    plain = np.asarray(Image.open(scored_run / "samples/step-000004/val_0.png"), dtype=float)
    stacked = np.asarray(Image.open(out / "samples/step-000004/val_0.png"), dtype=float)
    assert np.abs(plain - stacked).max() > 0
    preview = scoreboard.read(out)[-1]["preview"]
    assert preview["lora"] == str(few_step) and preview["lora_strength"] == 1.5
    assert preview["cheap"] is False
