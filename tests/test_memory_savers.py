"""The memory savers in training (studio/engine/savers.py, studio/trainer/base_model.py): each
one trains on CPU with the demo model and writes a LoRA that plain diffusers loads; fp8
storage lands close to full precision, block offload exactly on it; combinations that cannot
work are refused before the encoding starts.

The runs share one dataset; the fp32 runs share one encoding cache (text-encoder offload
does not change the encodings, fp8 text-encoder storage does, so it is cached apart)."""
from __future__ import annotations

import json
import resource

import pytest
import torch

from studio.engine.savers import Savers, problems
from studio.trainer import run_files, samples
from tests.trainer_helpers import FAST, add_validation_pairs, lora, make_dataset, max_abs, max_diff, run_trainer

slow = pytest.mark.slow  # the tests that train (the rule and the loader run in make test-fast)

# Checkpointing on everywhere: the base savers need it, and runs compare with each other.
# One process x 2 accumulation: the same global batch as the 2-process DDP run.
RUN = ["--max_steps", 4, "--save_steps", 4, "--sample_steps", 0, "--no-validation_loss",
       "--use_gradient_checkpointing", "--gradient_accumulation_steps", 2]
DDP = ["--max_steps", 4, "--save_steps", 4, "--no-validation_loss", "--use_gradient_checkpointing",
       "--max_samples", 1, "--sample_inference_steps", 2]
# fp8 against full precision: measured 0.16-0.17 (relative error of the LoRA deltas), so twice
# that; and at least this much, or fp8 storage was not applied.
FP8_TOLERANCE, FP8_AT_LEAST = 0.35, 1e-3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return add_validation_pairs(make_dataset(tmp_path_factory.mktemp("data") / "ds"), ["v0"],
                                size=(64, 48))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def _log(out) -> str:
    return (out / run_files.LOG).read_text()


@pytest.fixture(scope="module")
def plain(demo_model, dataset, runs):
    out = runs / "plain"
    run_trainer(demo_model, dataset, out, *RUN)
    return out


@pytest.fixture(scope="module")
def offloaded(demo_model, dataset, runs, plain):
    out = runs / "offloaded"
    run_trainer(demo_model, dataset, out, *RUN, "--offload_blocks", 1, "--text_encoder_offload")
    return out


@pytest.fixture(scope="module")
def fp8_ddp(demo_model, dataset, runs):
    """fp8 storage and block offload under 2-process DDP, with sample edits."""
    out = runs / "fp8_ddp"
    proc = run_trainer(demo_model, dataset, out, *DDP, "--fp8_base", "--offload_blocks", 1,
                       launch=["--multi_gpu", "--num_processes", "2"],
                       extra_env={"ACCELERATE_USE_CPU": "1"})
    assert "rank 1 of 2" in proc.stderr
    return out


@pytest.fixture(scope="module")
def int8(demo_model, dataset, runs):
    """The int8 base computes in bf16; the fp8 text encoder rides along."""
    out = runs / "int8"
    run_trainer(demo_model, dataset, out, *RUN, "--quantize_base", "int8", "--mixed_precision",
                "bf16", "--fp8_text_encoder")
    return out


def delta_error(a: dict, b: dict) -> float:
    """Relative error of LoRA file a's weight deltas (B @ A, all modules together) against b's."""
    num = den = 0.0
    for key in (k for k in b if ".lora_A." in k):
        up = key.replace(".lora_A.", ".lora_B.")
        da, db = a[up] @ a[key], b[up] @ b[key]
        num += (da - db).pow(2).sum().item()
        den += db.pow(2).sum().item()
    return (num / den) ** 0.5


# -- the rule and the loader (no training) --------------------------------------------------

def test_zero2_refuses_the_base_savers_and_takes_the_text_encoder_ones():
    for base in (Savers(fp8_base=True), Savers(quantize_base="int8"), Savers(offload_blocks=2)):
        found = problems(base, device="cuda:0", num_blocks=60, training=True, mode="zero2",
                         dtype=torch.bfloat16)
        assert len(found) == 1 and "ZeRO-2" in found[0] and "mode ddp" in found[0], base
        assert problems(base, device="cuda:0", num_blocks=60, training=True, mode="ddp",
                        dtype=torch.bfloat16) == []
    text = Savers(text_encoder_offload=True, fp8_text_encoder=True)
    assert problems(text, device="cuda:0", num_blocks=60, training=True, mode="zero2") == []


def _outputs(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return transformer(hidden_states=torch.randn(1, 12, 64, generator=g),
                           timestep=torch.tensor([0.5]),
                           encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
                           img_shapes=[[(1, 2, 3), (1, 3, 2)]], return_dict=False)[0]


@pytest.mark.parametrize("savers", [Savers(), Savers(offload_blocks=1)], ids=["none", "offload"])
def test_load_transformer_equals_from_pretrained(demo_model, savers):
    from diffusers import QwenImageTransformer2DModel

    from studio.engine.loading import load_transformer

    reference = QwenImageTransformer2DModel.from_pretrained(demo_model / "transformer").eval()
    loaded = load_transformer(demo_model / "transformer", "cpu", torch.float32, savers)
    expected, got = reference.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert torch.equal(_outputs(loaded), _outputs(reference))


def test_the_text_encoder_loaded_straight_to_the_device_is_the_pipeline_s_own(demo_model):
    """What the encoding loads on an accelerator when no text-encoder saver is asked (here on
    the CPU, the only device there is)."""
    from diffusers import QwenImageEditPipeline

    from studio.trainer.cache import load_component

    direct = load_component(demo_model, "text_encoder", torch.float32, torch.device("cpu"))
    own = QwenImageEditPipeline.from_pretrained(demo_model, transformer=None).text_encoder
    assert type(direct) is type(own)
    expected, got = own.state_dict(), direct.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_fp8_text_encoder_is_cached_apart_and_text_encoder_offload_is_not(demo_model, tmp_path):
    from studio.engine.model_folder import inspect_model_folder
    from studio.trainer.args import parse_args
    from studio.trainer.data import load_pairs
    from studio.trainer.encoding import encoded_source

    ds = make_dataset(tmp_path / "ds", n=1)

    def encoded(*flags):
        args = parse_args(["--model_path", str(demo_model), "--dataset_base_path", str(ds), *FAST,
                           "--output_path", str(tmp_path / "out"), *flags])
        get = encoded_source(args, load_pairs(ds), inspect_model_folder(demo_model),
                              torch.device("cpu"), torch.float32, stop=False)
        return get(0), len(list((ds / ".studio_cache").rglob("*.safetensors")))

    plain, n_plain = encoded()
    offloaded, n_offloaded = encoded("--text_encoder_offload")
    fp8, n_fp8 = encoded("--fp8_text_encoder")
    assert (n_plain, n_offloaded, n_fp8) == (1, 1, 2)  # offload: the same entry; fp8: its own
    assert torch.equal(fp8["target"], plain["target"])  # the VAE is untouched
    embeds, reference = fp8["prompt_embeds"], plain["prompt_embeds"]
    error = ((embeds - reference).norm() / reference.norm()).item()
    print(f"fp8 text encoder: prompt embeddings' relative error {error:.4f}")
    assert 1e-4 < error < 0.3  # fp8 storage was applied, and the embeddings are still close


# -- training with each saver ---------------------------------------------------------------

@slow
def test_block_offload_trains_the_same_lora_as_no_offload(plain, offloaded):
    assert "1 blocks offloaded, text encoder offloaded; gradient checkpointing on" in _log(offloaded)
    assert "all 4 pairs found in the cache" in _log(offloaded)  # text-encoder offload: same key
    a, b = lora(offloaded / "final.safetensors"), lora(plain / "final.safetensors")
    print(f"block offload: max LoRA difference {max_diff(a, b):.3g}")
    assert max_abs(b) > 0 and max_diff(a, b) <= 1e-6 * max_abs(b)


@slow
def test_fp8_base_under_ddp_is_close_to_full_precision_and_renders_samples(offloaded, fp8_ddp):
    # fp8 (e4m3, 3 mantissa bits) rounds every frozen weight by up to 6%: activations and so
    # the LoRA's gradients change by a few percent (6.5% at the first step here), and Adam's
    # sign-like first updates turn the near-zero components' changes into whole steps. Against
    # the offloaded fp32 run (same offload and global batch; DDP adds only ~1e-6) the deltas
    # differ by 0.16-0.17; with a different seed they would by 1.4.
    assert "fp8 base, 1 blocks offloaded; gradient checkpointing on" in _log(fp8_ddp)
    error = delta_error(lora(fp8_ddp / "final.safetensors"), lora(offloaded / "final.safetensors"))
    print(f"fp8 base: LoRA delta relative error {error:.4f} (tolerance {FP8_TOLERANCE})")
    assert FP8_AT_LEAST < error < FP8_TOLERANCE
    assert samples.has(fp8_ddp, 4), "the sample edits with the fp8/offloaded transformer failed"


@slow
def test_int8_base_trains_in_bf16(int8):
    log = _log(int8)
    assert "int8 base, fp8 text encoder; gradient checkpointing on" in log
    assert "encoding 4 of 4 pairs" in log and "torch.bfloat16" in log
    rows = [json.loads(line) for line in (int8 / run_files.METRICS).read_text().splitlines()]
    assert len(rows) == 4 and all(0 < r["loss"] < 10 for r in rows)


@slow
@pytest.mark.parametrize("run", ["fp8_ddp", "int8", "offloaded"])
def test_the_lora_loads_in_plain_diffusers_and_changes_the_output(request, demo_model, run):
    from diffusers import QwenImageEditPipeline
    from peft.utils import get_peft_model_state_dict

    out = request.getfixturevalue(run)
    pipe = QwenImageEditPipeline.from_pretrained(demo_model)
    before = _outputs(pipe.transformer)
    pipe.load_lora_weights(str(out / "final.safetensors"), adapter_name="trained")
    saved = lora(out / "final.safetensors")
    assert len(get_peft_model_state_dict(pipe.transformer, adapter_name="trained")) == len(saved) > 0
    after = _outputs(pipe.transformer)
    assert torch.isfinite(after).all()
    # 4 steps at lr 1e-3 move the output by ~4e-4 of its scale; an all-zero LoRA by nothing.
    assert (after - before).abs().max() > 1e-5 * before.abs().max()


@slow
def test_combinations_that_cannot_work_are_refused_before_encoding(demo_model, tmp_path):
    ds = make_dataset(tmp_path / "ds", n=1)
    out = tmp_path / "refused"
    started = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_trainer(demo_model, ds, out, "--fp8_base", "--quantize_base", "int8",
                       "--offload_blocks", 99, "--no-use_gradient_checkpointing", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = run_files.read_error(out)
    for why in ("choose one",                       # fp8 and int8 together
                "computes in bf16",                 # int8 in fp32 (the CPU default)
                "has 2 transformer blocks; cannot offload 99",
                "need gradient checkpointing"):
        assert why in error, (why, error)
    assert not (ds / ".studio_cache").exists() and "encoding" not in _log(out)
    # Quick: the trainer's CPU time (not wall time, which a loaded machine stretches) is its
    # imports' and the checks', with nothing encoded or loaded.
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (ended.ru_utime + ended.ru_stime) - (started.ru_utime + started.ru_stime) < 60


@slow
def test_the_plan_heads_the_log_and_a_run_that_will_not_fit_stops_unless_overridden(
        demo_model, tmp_path, plain):
    # The plain run's log starts with its plan and the verdict on this machine.
    head = _log(plain)
    assert "memory plan:" in head and "memory plan on cpu: fits" in head
    assert head.index("memory plan:") < head.index("training ")
    ds = make_dataset(tmp_path / "ds", n=1)
    # 4 GP targets in fp32 without checkpointing: the demo's planned activations alone exceed
    # this machine's RAM (its images are 64x64, so an overridden run trains normally).
    huge = ("--max_pixels", 4 * 10**9, "--max_steps", 1, "--sample_steps", 0, "--no-validation_loss")
    refused = run_trainer(demo_model, ds, tmp_path / "refused", *huge, check=False)
    assert refused.returncode == 2
    assert "will not fit" in run_files.read_error(tmp_path / "refused") and \
        "host RAM" in run_files.read_error(tmp_path / "refused")
    run_trainer(demo_model, ds, tmp_path / "forced", *huge, "--ignore_memory_plan")
    assert (tmp_path / "forced" / run_files.FINAL).is_file()
