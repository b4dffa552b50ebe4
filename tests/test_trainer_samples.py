"""Sample edits of the validation pairs at each checkpoint: real trainer runs on the demo model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from studio.trainer.args import parse_args
from studio.trainer.samples import file_names, list_samples
from tests.conftest import SAMPLED_ARGS as ARGS, SAMPLED_SIZE as VAL_SIZE
from tests.trainer_helpers import lora, max_diff, run_trainer

pytestmark = pytest.mark.slow  # whole training runs or a served app: not in make test-fast


@pytest.fixture
def dataset(sampled_run):
    return sampled_run[0]


@pytest.fixture
def sampled(sampled_run):
    """The shared run of tests/conftest.py: (output folder, trainer's stderr)."""
    return sampled_run[1], sampled_run[2]


def test_samples_at_each_checkpoint_with_index(sampled, dataset):
    out, _ = sampled
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000002", "step-000004"]
    for step in (2, 4):
        folder = out / "samples" / f"step-{step:06d}"
        index = json.loads((folder / "samples.json").read_text())
        assert index["step"] == step and index["inference_steps"] == 2
        assert [s["sample_id"] for s in index["samples"]] == ["val/0", "val/1"]
        for i, s in enumerate(index["samples"]):
            # Direction: the source is `edit_image` (the input), the target is `image`.
            assert s["source"] == str(dataset / f"images/source_v{i}.png")
            assert s["target"] == str(dataset / f"images/edited_v{i}.png")
            assert s["prompt"] == f"Turn the cat into a dog, {i}"
            assert s["output"] == str(folder / f"val_{i}.png")
            with Image.open(s["output"]) as im:
                assert im.size == VAL_SIZE
    listed = list_samples(out)
    assert [(s["step"], s["sample_id"]) for s in listed] == [(4, "val/0"), (4, "val/1"),
                                                             (2, "val/0"), (2, "val/1")]
    assert not list(out.glob("samples/.*"))  # no staging folder left behind


def test_sample_is_the_current_lora_through_plain_diffusers(sampled, dataset, demo_model):
    """The step-4 sample equals diffusers' own edit with step-000004.safetensors loaded (same
    seed): the live LoRA was applied and the precomputed prompt embedding is the pipeline's."""
    from diffusers import QwenImageEditPipeline

    out, _ = sampled
    entry = next(s for s in list_samples(out) if s["step"] == 4 and s["sample_id"] == "val/0")
    pipe = QwenImageEditPipeline.from_pretrained(demo_model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(out / "step-000004.safetensors"))
    expected = pipe(image=Image.open(entry["source"]).convert("RGB"), prompt=entry["prompt"],
                    true_cfg_scale=1.0, num_inference_steps=2, width=VAL_SIZE[0],
                    height=VAL_SIZE[1], generator=torch.Generator().manual_seed(entry["seed"])).images[0]
    got = np.asarray(Image.open(entry["output"]), dtype=np.int16)
    differ = lambda a, b: (np.abs(a - np.asarray(b, dtype=np.int16)) > 0).mean()  # noqa: E731
    # Measured: 0 values differ (up to rounding across thread counts: allow 1%, by 1 level).
    assert np.abs(got - np.asarray(expected, dtype=np.int16)).max() <= 1
    assert differ(got, expected) < 0.01
    # The LoRA moved between checkpoints, and so did the sample (measured: ~20% of values).
    assert differ(got, Image.open(out / "samples/step-000002/val_0.png")) > 0.05


def test_sampling_leaves_training_untouched_and_failures_only_log(sampled, demo_model, dataset,
                                                                   tmp_path):
    """A run whose sampling fails (missing validation file) still trains, and trains exactly
    as the sampled run did: same losses, bit-identical LoRA."""
    out, _ = sampled
    plain = tmp_path / "plain"
    proc = run_trainer(demo_model, dataset, plain, *ARGS,
                       "--validation_metadata_path", dataset / "missing.csv")
    assert "sample edits disabled" in proc.stderr and "missing.csv" in proc.stderr
    assert not (plain / "samples").exists()
    losses = lambda o: [json.loads(x)["loss"] for x in (o / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(plain) == losses(out)
    for name in ("step-000002.safetensors", "final.safetensors"):
        assert max_diff(lora(plain / name), lora(out / name)) == 0.0


def test_flags_and_defaults(dataset, tmp_path):
    from studio.trainer.sample_render import due, validation_pairs

    base = ["--dataset_base_path", str(dataset)]
    args = parse_args(base)
    assert (args.sample_steps, args.sample_inference_steps, args.max_samples,
            args.sample_true_cfg_scale) == (None, 8, 4, 1.0)
    assert [p.sample_id for p in validation_pairs(args)] == ["val/0", "val/1"]  # found by default
    assert len(validation_pairs(parse_args(base + ["--max_samples", "1"]))) == 1
    assert validation_pairs(parse_args(base + ["--sample_steps", "0"])) == []
    assert validation_pairs(parse_args(["--dataset_base_path", str(tmp_path)])) == []
    assert due(args, 2, saved=True, stopping=False) and not due(args, 3, saved=False, stopping=False)
    assert not due(args, 2, saved=True, stopping=True)  # a stop ends the run promptly
    every3 = parse_args(base + ["--sample_steps", "3"])
    assert due(every3, 3, saved=False, stopping=False) and not due(every3, 4, saved=True, stopping=False)
    with pytest.raises(SystemExit):
        parse_args(base + ["--sample_inference_steps", "1"])


def test_file_names_are_safe_and_distinct():
    assert file_names(["a/b", "a b", "a_b", "..", "x"]) == [
        "a_b.png", "a_b-2.png", "a_b-3.png", "sample.png", "x.png"]
