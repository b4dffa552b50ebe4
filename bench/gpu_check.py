"""GPU check: the real-size Qwen-Image-Edit transformer with random bf16 weights, timed for
editing (studio engine options vs plain diffusers defaults) and for LoRA training.

Run it through bench/gpu_check.sh (which installs carried wheels). On CPU, shrink it:
    bash bench/gpu_check.sh --device cpu --layers 2 --size 256

Cases, in one process, in this order:
  memory <card preset>       first, while the card is empty: each card preset for one CUDA GPU
                             (studio.jobs.launch.PRESET_CARD_GB: 24, 32, 48, 80 GB) at its own
                             setting (the seed's: 512^2 targets, 1 MP edit images), the process
                             capped with set_per_process_memory_fraction to that card less
                             studio.jobs.memory.DRIVER_GB; the base placed by the trainer's
                             loader (studio.engine.loading.place, with that preset's savers)
                             from one random host copy of the weights shared by every preset;
                             LoRA rank 32, checkpointing, AdamW and bf16 autocast as the trainer
                             runs them. Per preset: peak allocated memory beside the memory
                             plan's training peak, whether it ran inside the card (an OOM is a
                             result), samples/s after a warm-up step. A preset with the savers
                             and setting of a smaller card's that fitted (48 GB = 32 GB's) takes
                             that one's figures. Goals: every preset fits its card; the plan
                             within 15 % of the peak; the 24 GB preset >= 0.10 samples/s.
                             Budget: presets that would start after --memory-budget-s (180 s).
  then on one model instance:
  infer  diffusers_default   per step: cond call + uncond call, no text mask (diffusers drops
                             an all-ones mask), then the pipeline's CFG combination
         cfg_batched         one call with batch 2: the shorter negative prompt padded and
                             masked (that mask is what batching costs: SDPA's masked path)
         compiled[_cfg_batched]  the same after studio.engine.speed.compile_transformer
                             (what Editor(compile=True) does)
  train  eager / compiled    studio.trainer.objective.sample_loss on cached embeddings
                             (random tensors of the real shapes), peft LoRA rank 32 on the
                             seed's targets (fp32 LoRA weights as the trainer keeps them),
                             gradient checkpointing, AdamW; one sample per step
  --budget-s (420 s, from the start) skips infer and train cases that would start later.

Model FLOPs (the MFU numerator; written out in forward_flops below):
  forward = 2 * sum(per-token linear weights x the tokens that pass through them)
            + attention 4 * L * S^2 * d   (QK^T and AV, S = joint sequence, d = heads x 128)
  Per-token weights: each image token goes through the image stream (to_q/k/v, to_out,
  img_mlp), each text token through the text stream: about 6.8e9 per token of the ~20e9
  parameters; the adaLN modulation layers run once per sample (counted, negligible).
  training = 3 x forward: forward + backward. With the base frozen, the backward computes
  input gradients only (~1 x forward) and gradient checkpointing recomputes the forward
  (~1 x), so the hardware also does ~3 x forward; LoRA's own matmuls are left out (<1%).
  MFU = FLOPs / seconds / PEAK_BF16 (dense, no sparsity).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM parts; H100 PCIe is lower).
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12}
SEED_SAMPLES_PER_S = {"seed_ascend_per_card": 0.32, "competitor_per_card": 0.27}  # docs/design.md
TRAIN_GOAL, INFER_GOAL = 1.0, 1.5
LATENT_CHANNELS, VAE_FACTOR, PATCH = 16, 8, 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--heads", type=int, default=None, help="default 24 (2 on CPU: width shrinks too)")
    p.add_argument("--size", type=int, default=1024, help="edit: output and input image side (px)")
    p.add_argument("--text-tokens", type=int, default=None,
                   help="prompt tokens incl. the ~1 MP image's VL tokens (default ~1400 at 1024)")
    p.add_argument("--train-size", type=int, default=None, help="training target side (size/2)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per inference case (3; 1 on CPU)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps per case (4; 2 on CPU)")
    p.add_argument("--dtype", default=None, help="default bf16 (fp32 on CPU, where bf16 is slow)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile cases")
    p.add_argument("--compile-backend", default=None,
                   help="default inductor (aot_eager on CPU: traces the same, no minutes of C++ codegen)")
    p.add_argument("--skip-infer", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-memory", action="store_true", help="skip the card presets' memory runs")
    p.add_argument("--memory-steps", type=int, default=None,
                   help="timed training steps per card preset, after one warm-up step (2; 1 on CPU)")
    p.add_argument("--memory-budget-s", type=float, default=180,
                   help="skip card presets that would start this long after the memory section did")
    p.add_argument("--budget-s", type=float, default=420, help="skip cases that start after this")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.json"))
    a = p.parse_args(argv)
    a.dtype = getattr(torch, a.dtype or ("float32" if a.device == "cpu" else "bfloat16"))
    a.compile_backend = a.compile_backend or ("aot_eager" if a.device == "cpu" else "inductor")
    cpu = a.device == "cpu"
    # 2 and 3 (were 3 and 4): the memory section's ~2-3 minutes come out of the same 10.
    a.repeats, a.train_steps = a.repeats or (1 if cpu else 2), a.train_steps or (2 if cpu else 3)
    a.memory_steps = a.memory_steps or (1 if cpu else 2)
    a.heads = a.heads or (2 if a.device == "cpu" else 24)
    scale = (a.size / 1024) ** 2
    a.text_tokens = a.text_tokens or max(16, round(1400 * scale))
    a.neg_text_tokens = max(8, a.text_tokens - max(4, round(50 * scale)))  # " " + template + image
    a.train_size = a.train_size or a.size // 2
    return a


# -- model ---------------------------------------------------------------------------------
def build_transformer(layers: int, heads: int, device: str, dtype: torch.dtype):
    """Random weights without a CPU init or an fp32 copy (20e9 fp32 weights would not fit):
    built on the meta device, cast, materialised on the device, then filled there."""
    from diffusers import QwenImageTransformer2DModel
    from diffusers.models.transformers.transformer_qwenimage import QwenEmbedRope

    config = transformer_config(layers, heads)
    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**config)
    # RoPE tables are plain attributes (not buffers): rebuild them for real.
    model.pos_embed = QwenEmbedRope(theta=10000, axes_dim=list(config["axes_dims_rope"]), scale_rope=True)
    model = torch.nn.Module.to(model, dtype).to_empty(device=device)  # (diffusers' .to warns)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            random_fill(name, p, gen)
    return model.requires_grad_(False).eval(), config


def transformer_config(layers: int, heads: int) -> dict:
    return dict(num_layers=layers, attention_head_dim=128, num_attention_heads=heads,
                joint_attention_dim=3584, in_channels=64, out_channels=16,
                axes_dims_rope=(16, 56, 56))


def random_fill(name: str, p: torch.Tensor, gen: torch.Generator) -> None:
    if p.dim() >= 2:  # fan-in scaled: activations stay O(1) through the depth
        p.normal_(0.0, p.shape[1] ** -0.5, generator=gen)
    elif name.endswith("bias"):
        p.zero_()
    else:  # norm scales
        p.fill_(1.0)


def _linear_weights(*modules) -> int:
    """Weights of the Linear layers inside; peft's lora_A/lora_B are left out (its wrapper
    keeps the original Linear as `base_layer`, which is counted)."""
    return sum(m.weight.numel() for module in modules for name, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in name)


def forward_flops(model, image_tokens: int, text_tokens: int, batch: int = 1) -> float:
    """The formula in the module docstring, counted from the model's own layers."""
    img = txt = mod = 0
    for block in model.transformer_blocks:
        a = block.attn
        img += _linear_weights(a.to_q, a.to_k, a.to_v, a.to_out[0], block.img_mlp)
        txt += _linear_weights(a.add_q_proj, a.add_k_proj, a.add_v_proj, a.to_add_out, block.txt_mlp)
        mod += _linear_weights(block.img_mod, block.txt_mod)
    img += _linear_weights(model.img_in, model.proj_out)
    txt += _linear_weights(model.txt_in)
    seq = image_tokens + text_tokens
    linear = 2 * (img * image_tokens + txt * text_tokens + mod)
    attention = 4 * len(model.transformer_blocks) * seq ** 2 * model.inner_dim
    return float(batch * (linear + attention))


def peak_flops(device: str) -> tuple[str, float | None]:
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16.items():
        if key in name:
            return name, peak
    return name, None


# -- timing --------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    sync(device)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), runs


# -- inference -----------------------------------------------------------------------------
class EditInputs:
    """One denoising step's transformer inputs at a size x size edit of a size x size image."""

    def __init__(self, size: int, text: int, neg_text: int, device: str, dtype: torch.dtype):
        g = torch.Generator(device).manual_seed(1)
        side = size // VAE_FACTOR // PATCH
        self.target_tokens = side * side
        tokens = 2 * self.target_tokens  # target latents + the edit image's latents
        self.hidden = torch.randn(1, tokens, 64, generator=g, device=device, dtype=dtype)
        self.pos = torch.randn(1, text, 3584, generator=g, device=device, dtype=dtype)
        self.neg = torch.randn(1, neg_text, 3584, generator=g, device=device, dtype=dtype)
        self.timestep = torch.full((1,), 0.5, device=device, dtype=dtype)
        self.shapes = [[(1, side, side), (1, side, side)]]
        # Batch 2 needs equal text lengths: pad the negative and mask the padding out.
        pad = text - neg_text
        self.both = torch.cat([self.pos, torch.cat([self.neg, self.neg.new_zeros(1, pad, 3584)], 1)])
        self.both_mask = torch.ones(2, text, dtype=torch.bool, device=device)
        self.both_mask[1, neg_text:] = False


def cfg_combine(cond, uncond, scale: float = 4.0):
    """QwenImageEditPipeline's true-CFG combination with its norm rescale."""
    comb = uncond + scale * (cond - uncond)
    return comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))


def step_separate(model, x: EditInputs):
    """What diffusers does per step: two transformer calls, each without a mask."""
    kw = dict(hidden_states=x.hidden, timestep=x.timestep, img_shapes=x.shapes, return_dict=False)
    cond = model(encoder_hidden_states=x.pos, encoder_hidden_states_mask=None, **kw)[0]
    uncond = model(encoder_hidden_states=x.neg, encoder_hidden_states_mask=None, **kw)[0]
    n = x.target_tokens
    return cfg_combine(cond[:, :n], uncond[:, :n])


def step_batched(model, x: EditInputs):
    """CFG batched into one call of batch 2 (padded negative prompt, masked)."""
    out = model(hidden_states=x.hidden.expand(2, -1, -1), timestep=x.timestep.expand(2),
                encoder_hidden_states=x.both, encoder_hidden_states_mask=x.both_mask,
                img_shapes=x.shapes * 2, return_dict=False)[0]
    n = x.target_tokens
    return cfg_combine(out[:1, :n], out[1:, :n])


def run_inference(model, a, device, dtype, flops_step, peak, report) -> None:
    from studio.engine.speed import compile_transformer

    x = EditInputs(a.size, a.text_tokens, a.neg_text_tokens, device, dtype)
    cases = [("diffusers_default", step_separate), ("cfg_batched", step_batched)]
    if not a.no_compile:
        cases += [("compiled", step_separate), ("compiled_cfg_batched", step_batched)]
    reference, baseline = None, None
    for name, fn in cases:
        if report.over_budget(name):
            continue
        if name.startswith("compiled") and not report.compiled:
            started = time.perf_counter()
            compile_transformer(model, a.compile_backend)
            report.compiled = True
            report.note["compile_call_s"] = round(time.perf_counter() - started, 2)
        with torch.inference_mode():
            first = time.perf_counter()
            out = fn(model, x)  # warm-up; for compiled cases this includes the compile
            sync(device)
            warmup_s = time.perf_counter() - first
            seconds, runs = timed(lambda: fn(model, x), device, a.repeats, warmup=0)
        reference = out.float() if reference is None else reference
        baseline = seconds if baseline is None else baseline
        # Relative to the output's scale: bf16 rounding alone gives ~1e-2 here.
        diff = ((out.float() - reference).abs().max() / reference.abs().max()).item()
        report.emit({"bench": "gpu_infer_step_s", "case": name, "value": round(seconds, 4),
                     "unit": "s/step", "baseline_diffusers_s": round(baseline, 4),
                     "speedup_vs_diffusers": round(baseline / seconds, 3), "goal_speedup": INFER_GOAL,
                     "mfu": _mfu(flops_step, seconds, peak), "tflops": round(flops_step / seconds / 1e12, 1),
                     "max_rel_diff_vs_diffusers": round(diff, 5), "finite": bool(torch.isfinite(out).all()),
                     "first_call_s": round(warmup_s, 2), "runs_s": [round(r, 4) for r in runs]})


# -- training ------------------------------------------------------------------------------
def run_training(model, a, device, dtype, peak, report) -> None:
    from studio.engine.speed import compile_transformer
    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.lora_io import add_lora, lora_parameters
    from studio.trainer.objective import sample_loss
    from studio.trainer.schedule import TrainingSchedule

    for block in model.transformer_blocks:  # back to eager: the training case starts uncompiled
        block._compiled_call_impl = None
    report.compiled = False
    torch.manual_seed(0)
    add_lora(model, 32, 32.0, DEFAULT_TARGETS)
    params = list(lora_parameters(model).values())
    for p in params:  # as studio/trainer/loop.py: LoRA weights in fp32 on a bf16 base
        p.data = p.data.float()
        p.requires_grad_(True)
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    g = torch.Generator("cpu").manual_seed(2)
    t_lat, e_lat = a.train_size // VAE_FACTOR, a.size // VAE_FACTOR  # ~1 MP edit image at 1024
    encoded = {  # the cache's tensors, random, in the cache's shapes
        "target": torch.randn(1, LATENT_CHANNELS, 1, t_lat, t_lat, generator=g),
        "edit_0": torch.randn(1, LATENT_CHANNELS, 1, e_lat, e_lat, generator=g),
        "prompt_embeds": torch.randn(1, a.text_tokens, 3584, generator=g),
        "prompt_mask": torch.ones(1, a.text_tokens, dtype=torch.long)}
    image_tokens = (t_lat // PATCH) ** 2 + (e_lat // PATCH) ** 2
    flops = 3 * forward_flops(model, image_tokens, a.text_tokens)
    schedule = TrainingSchedule()
    losses = []

    def step():
        loss, _ = sample_loss(model, encoded, schedule, g, device, dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())

    cases = ["train_eager"] + ([] if a.no_compile else ["train_compiled"])
    for name in cases:
        if report.over_budget(name):
            continue
        if name == "train_compiled":
            compile_transformer(model, a.compile_backend)
        first = time.perf_counter()
        step()
        sync(device)
        warmup_s = time.perf_counter() - first
        seconds, runs = timed(step, device, a.train_steps, warmup=1)
        memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
        report.emit({"bench": "gpu_train_samples_per_s", "case": name, "value": round(1 / seconds, 3),
                     "unit": "samples/s", "goal": TRAIN_GOAL, **SEED_SAMPLES_PER_S,
                     "vs_seed": round(1 / seconds / SEED_SAMPLES_PER_S["seed_ascend_per_card"], 2),
                     "step_s": round(seconds, 4), "mfu": _mfu(flops, seconds, peak),
                     "tflops": round(flops / seconds / 1e12, 1), "first_steps_s": round(warmup_s, 2),
                     "loss_finite": all(map(lambda v: v == v, losses)),
                     "target": f"{a.train_size}x{a.train_size}", "edit_image": f"{a.size}x{a.size}",
                     "text_tokens": a.text_tokens, "lora_rank": 32, "lora_params": sum(p.numel() for p in params),
                     "peak_memory_gib": memory and round(memory, 1), "runs_s": [round(r, 4) for r in runs]})


def _mfu(flops: float, seconds: float, peak: float | None):
    return None if peak is None else round(flops / seconds / peak, 4)


# -- memory --------------------------------------------------------------------------------
REAL_LAYERS, REAL_HEADS, REAL_SIZE = 60, 24, 1024
PLAN_GOAL = 0.15        # the plan within 15 % of the measured peak
SMALL_CARD = 24         # the smallest card preset, and its speed goal
SMALL_CARD_GOAL = 0.10  # samples/s


def card_presets() -> list[tuple[str, int, object]]:
    """(name, card GB, TrainOptions) of each card preset for CUDA, smallest card first."""
    from studio.jobs.presets import PRESET_CARD_GB, preset_options

    out = []
    for name, card in sorted(PRESET_CARD_GB.items(), key=lambda item: item[1]):
        opts = preset_options(name)
        if opts.device == "cuda":
            out.append((name, card, opts))
    return out


def full_size(a) -> bool:
    return (a.layers, a.heads, a.size) == (REAL_LAYERS, REAL_HEADS, REAL_SIZE)


def measured_setting(s, a):
    """What this run measures for the preset's setting `s`: the setting itself at full size;
    reduced (the CPU smoke test), the offloaded blocks scaled with the depth (at least one,
    so offload still runs) and the image sides with --size."""
    from dataclasses import replace

    if full_size(a):
        return s
    n = s.savers.offload_blocks
    blocks = min(a.layers, max(1, round(n * a.layers / REAL_LAYERS))) if n else 0
    side = lambda px: max(16, round(px * a.size / REAL_SIZE / 16) * 16)  # noqa: E731
    w, h = s.fixed_size or (int(s.max_pixels ** 0.5),) * 2
    edit = side(REAL_SIZE) if s.edit_auto_resize else side(w)
    return replace(s, savers=replace(s.savers, offload_blocks=blocks),
                   fixed_size=(side(w), side(h)), max_pixels=edit * edit, edit_auto_resize=False)


def synthetic_pair(s, text_tokens: int) -> dict[str, torch.Tensor]:
    """One cached pair of the setting's shapes, random: target latents at the training size,
    the edit image's at ~1 MP (the pipeline's auto-resize) and the prompt's embeddings."""
    w, h = s.fixed_size or (int(s.max_pixels ** 0.5),) * 2
    edit = REAL_SIZE if s.edit_auto_resize else int(s.max_pixels ** 0.5)
    g = torch.Generator("cpu").manual_seed(4)
    return {"target": torch.randn(1, LATENT_CHANNELS, 1, h // VAE_FACTOR, w // VAE_FACTOR, generator=g),
            "edit_0": torch.randn(1, LATENT_CHANNELS, 1, edit // VAE_FACTOR, edit // VAE_FACTOR, generator=g),
            "prompt_embeds": torch.randn(1, text_tokens, 3584, generator=g),
            "prompt_mask": torch.ones(1, text_tokens, dtype=torch.long)}


def random_master(config: dict, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every weight, random, in host memory (41 GB at full size), made once and shared by every
    preset. Drawn on the device and copied out: the host's generator would take minutes for
    20e9 values."""
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        shapes = QwenImageTransformer2DModel(**config).state_dict()
    gen = torch.Generator(device).manual_seed(0)
    master = {}
    for name, t in shapes.items():
        value = torch.empty(t.shape, dtype=dtype, device=device)
        random_fill(name, value, gen)
        master[name] = value.cpu()
    return master


def accelerate_forward(model, device: torch.device, dtype: torch.dtype) -> None:
    """What accelerator.prepare does to the trainer's model under bf16 mixed precision: the
    forward under autocast, its outputs cast to fp32."""
    from accelerate.utils import convert_outputs_to_fp32

    model.forward = convert_outputs_to_fp32(torch.autocast(device.type, dtype=dtype)(model.forward))


def trainable_lora(model, rank: int, targets: str, device) -> list[torch.nn.Parameter]:
    """LoRA as the trainer adds it (studio.trainer.base_model): on the frozen base, every LoRA
    tensor fp32 on the device, also in offloaded blocks."""
    from studio.trainer.base_model import fresh_lora
    from studio.trainer.lora_io import add_lora, lora_parameters

    model.requires_grad_(False)
    add_lora(model, rank, float(rank), targets)  # alpha: the rank, the trainer's default
    params = lora_parameters(model)
    fresh_lora(params, device, seed=0)
    return list(params.values())


def plan_training(folder: Path | None, s) -> dict:
    """The plan's training peak and its parts (None where the plan peaks while encoding: its
    parts are then the encoding phase's)."""
    from studio.engine.memory.plan import train_plan

    if folder is None:
        return {"plan_gib": None, "plan_phase": None, "plan_parts_gib": None}
    plan = train_plan(folder, s)
    training = plan.phase == "training"
    return {"plan_gib": round(plan.device_gb, 2) if training else None, "plan_phase": plan.phase,
            "plan_parts_gib": {k: round(v, 3) for k, v in plan.parts.items()} if training else None}


def measure_preset(row: dict, config: dict, master: dict, s, text_tokens: int, a) -> None:
    """One preset's run: place the random base with its savers, add LoRA, train. The figures
    go into `row` as they come, with the stage it is at: an OOM or any other error leaves
    the figures so far (the caller frees what the run held)."""
    import math

    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel

    from studio.engine.loading import place
    from studio.engine.lora_targets import DEFAULT_TARGETS
    from studio.trainer.objective import loss_at
    from studio.trainer.schedule import TrainingSchedule

    device, dtype = torch.device(a.device), a.dtype
    row["stage"] = "placing the base"
    started = time.perf_counter()
    with init_empty_weights():  # as load_transformer builds it
        model = QwenImageTransformer2DModel.from_config(config)
    model = place(model, device, dtype, s.savers, lambda names: {n: master[n] for n in names})
    params = trainable_lora(model, s.lora_rank, s.lora_targets or DEFAULT_TARGETS, device)
    if s.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    if dtype != torch.float32:
        accelerate_forward(model, device, dtype)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)  # TrainOptions' defaults
    sync(a.device)
    row.update(place_s=round(time.perf_counter() - started, 2), stage="first training step")
    schedule = TrainingSchedule()
    encoded = synthetic_pair(s, text_tokens)
    noise = torch.randn(encoded["target"].shape, generator=torch.Generator().manual_seed(5))
    losses = []

    def step():
        loss, _ = loss_at(model, encoded, schedule, len(schedule) // 2, noise, device, dtype)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    first = time.perf_counter()
    step()  # warm-up: kernels chosen, AdamW's moments made (they exist at every later step)
    sync(a.device)
    row.update(first_step_s=round(time.perf_counter() - first, 2), stage="timed training steps")
    seconds, runs = timed(step, a.device, a.memory_steps, warmup=0)
    row.update({"samples_per_s": round(1 / seconds, 3), "step_s": round(seconds, 3),
                "runs_s": [round(r, 3) for r in runs], "loss_finite": all(map(math.isfinite, losses))})
    del row["stage"]


def _free(device: str) -> None:
    import gc

    gc.collect()  # diffusers' hooks and the model refer to each other
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        host = getattr(torch._C, "_host_emptyCache", None)  # pinned copies of offloaded blocks
        if host:
            host()


def run_memory(a, report) -> None:
    """Each card preset for one CUDA GPU on a process capped to its card (see the docstring)."""
    import tempfile

    from studio.engine.memory.plan import sequence
    from studio.engine.memory.shapes import shapes_folder
    from studio.jobs import memory

    started = time.perf_counter()
    deadline = started + a.memory_budget_s
    cuda = a.device.startswith("cuda")
    total_gib = torch.cuda.get_device_properties(a.device).total_memory / 2**30 if cuda else None
    config = transformer_config(a.layers, a.heads)
    measured: dict = {}  # setting measured -> the row of the smallest card it ran on
    rows = []
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    with tempfile.TemporaryDirectory() as tmp:
        try:  # the real model's shapes, headers only; without them, measure without a plan
            folder = shapes_folder(Path(tmp))
        except Exception as exc:
            folder, report.note["memory_plan_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
        master = random_master(config, a.device, a.dtype)
        report.note["memory_master_s"] = round(time.perf_counter() - started, 1)
        _free(a.device)  # the draws' cached blocks: each preset starts from an empty card
        for name, card, opts in card_presets():
            if report.over_budget(f"memory {name}", deadline):
                continue
            s = memory.setting(opts)
            m = measured_setting(s, a)
            w, h = s.fixed_size or (int(s.max_pixels ** 0.5),) * 2
            edit = REAL_SIZE if s.edit_auto_resize else w
            # The plan's count; without its folder, the same count for the Plus pipeline
            # (the 64-token instruction and a 384^2 VL image in 28-pixel tokens).
            text = sequence(folder, w * h, edit * edit, s.edit_images)["text"] if folder else \
                64 + s.edit_images * (384 * 384 // 28 ** 2)
            if not full_size(a):  # scaled as the images are (and as --text-tokens is)
                text = max(16, round(text * (a.size / REAL_SIZE) ** 2))
            # The card less the driver's share; a card this size or larger gets the whole card.
            cap = min((card - memory.DRIVER_GB) / total_gib, 1.0) if cuda else None
            mw, mh = m.fixed_size or (int(m.max_pixels ** 0.5),) * 2
            medit = REAL_SIZE if m.edit_auto_resize else int(m.max_pixels ** 0.5)
            row = {"bench": "gpu_memory_preset", "case": name, "card_gb": card,
                   "cap_gib": round(cap * total_gib, 2) if cuda else None,
                   "savers": s.savers.describe(), "measured_savers": m.savers.describe(),
                   "target": f"{mw}x{mh}", "edit_image": f"{medit}x{medit}", "text_tokens": text,
                   "lora_rank": m.lora_rank, "gradient_checkpointing": m.gradient_checkpointing,
                   **plan_training(folder, s), "goal_fits": True, "goal_plan_rel_error": PLAN_GOAL}
            if card == SMALL_CARD:
                row["goal_samples_per_s"] = SMALL_CARD_GOAL
            earlier = measured.get(m)
            if earlier and "error" not in earlier and (earlier["fits"] or not cuda):
                # The same savers and setting as a smaller card's preset that fitted: the same
                # allocations, which a larger cap cannot make fail. Saves a placement and steps.
                row.update({k: earlier.get(k) for k in ("fits", "value", "unit", "peak_gib",
                                                        "reserved_gib", "samples_per_s", "step_s",
                                                        "loss_finite")}, measured_as=earlier["case"])
            else:
                if cuda:
                    torch.cuda.set_per_process_memory_fraction(cap)
                    torch.cuda.reset_peak_memory_stats()
                run_started = time.perf_counter()
                try:
                    measure_preset(row, config, master, m, text, a)
                    row["fits"] = True if cuda else None  # no cap on CPU: nothing to fit in
                except Exception as exc:  # an OOM is a result: record it and go on
                    row.update(fits=False if isinstance(exc, oom) else None,
                               failed_at=row.pop("stage", None),
                               error=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
                row["run_s"] = round(time.perf_counter() - run_started, 1)
                _free(a.device)  # after the except block: the traceback held the model
                if cuda:
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    row["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
                else:
                    row["peak_gib"] = None  # no allocator meter on CPU
                row.update(value=row["peak_gib"], unit="GiB")
                measured[m] = row
            plan, peak = row.get("plan_gib"), row.get("peak_gib")
            # Only a full-size run measures what the plan describes; a failed run has no peak.
            error = round((plan - peak) / peak, 3) \
                if full_size(a) and plan and peak and row.get("fits") else None
            row.update(plan_rel_error=error,
                       plan_within_goal=None if error is None else abs(error) <= PLAN_GOAL)
            report.emit(row)
            rows.append(row)
        del master
    _free(a.device)
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.reset_peak_memory_stats()
    report.emit(memory_summary(rows, time.perf_counter() - started, full_size(a) and cuda))


def memory_summary(rows: list[dict], seconds: float, real: bool) -> dict:
    """The three goals over every preset measured (None where nothing could say: the speed
    goal only on a GPU at full size)."""
    fits = [r.get("fits") for r in rows]
    errors = [r["plan_rel_error"] for r in rows if r.get("plan_rel_error") is not None]
    small = [r.get("samples_per_s") for r in rows if r["card_gb"] == SMALL_CARD and real]
    return {"bench": "gpu_memory_summary", "value": round(seconds, 1), "unit": "s",
            "presets": [r["case"] for r in rows],
            "every_preset_fits": None if not rows or None in fits else all(fits),
            "plan_max_abs_rel_error": max(map(abs, errors)) if errors else None,
            "goal_plan_rel_error": PLAN_GOAL,
            "plan_within_goal": all(abs(e) <= PLAN_GOAL for e in errors) if errors else None,
            "small_card_samples_per_s": small[0] if small else None,
            "goal_small_card_samples_per_s": SMALL_CARD_GOAL,
            "small_card_meets_goal": None if not small or small[0] is None else small[0] >= SMALL_CARD_GOAL}


# -- report --------------------------------------------------------------------------------
class Report:
    """Prints each result as a JSON line and rewrites the results file after each one, so a
    run stopped at its time limit still leaves what it measured."""

    def __init__(self, path: str, budget_s: float, note: dict):
        self.path, self.budget_s, self.note = Path(path), budget_s, note
        self.started = time.perf_counter()
        self.results: list[dict] = []
        self.skipped: list[str] = []
        self.compiled = False

    def over_budget(self, case: str, deadline: float | None = None) -> bool:
        """Whether `case` would start after the budget (or `deadline`, a perf_counter time)."""
        now = time.perf_counter()
        if now - self.started > self.budget_s or (deadline is not None and now > deadline):
            self.skipped.append(case)
            self.write()
            return True
        return False

    def emit(self, row: dict) -> None:
        print(json.dumps(row), flush=True)
        self.results.append(row)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.note["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.path.write_text(json.dumps({**self.note, "skipped": self.skipped,
                                         "results": self.results}, indent=1))


def main(argv=None) -> None:
    a = parse_args(argv)
    device, dtype = a.device, a.dtype
    name, peak = peak_flops(device)
    import diffusers

    note = {"device": name, "dtype": str(dtype), "compile_backend": a.compile_backend,
            "peak_bf16_flops": peak, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "size": a.size, "text_tokens": a.text_tokens, "neg_text_tokens": a.neg_text_tokens}
    report = Report(a.out, a.budget_s, note)
    print(json.dumps({"bench": "gpu_check_setup", **note}), flush=True)
    if not a.skip_memory:  # first: the card is empty, and the cap is this process's
        try:
            run_memory(a, report)
        except Exception as exc:  # the other sections still run
            report.emit({"bench": "gpu_memory_error", "error": f"{type(exc).__name__}: {exc}"[:500]})
        _free(device)  # here, not in the except block, whose traceback holds the section's frames
        if device.startswith("cuda"):
            torch.cuda.set_per_process_memory_fraction(1.0)
    if not (a.skip_infer and a.skip_train):
        started = time.perf_counter()
        model, config = build_transformer(a.layers, a.heads, device, dtype)
        sync(device)
        side = a.size // VAE_FACTOR // PATCH
        flops_step = forward_flops(model, 2 * side * side, a.text_tokens) + \
            forward_flops(model, 2 * side * side, a.neg_text_tokens)
        note.update(config=config, params=sum(p.numel() for p in model.parameters()),
                    build_s=round(time.perf_counter() - started, 2), infer_flops_per_step=flops_step)
        print(json.dumps({"bench": "gpu_check_model", **{k: note[k] for k in
                          ("params", "build_s", "infer_flops_per_step")}}), flush=True)
        if not a.skip_infer:
            run_inference(model, a, device, dtype, flops_step, peak, report)
        if not a.skip_train:
            run_training(model, a, device, dtype, peak, report)
    report.write()
    print(json.dumps({"bench": "gpu_check_done", "value": note["elapsed_s"], "unit": "s",
                      "results_file": str(report.path), "skipped": report.skipped}), flush=True)


if __name__ == "__main__":
    main()
