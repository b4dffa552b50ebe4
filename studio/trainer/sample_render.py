"""Sample edits of the validation pairs with the LoRA being trained (rank 0 only).

Memory: the validation prompts are encoded ONCE, before the transformer is loaded (the text
encoder is on the device then anyway, as for the training pairs), and the text encoder is
freed right after; the embeddings stay on the CPU. At a checkpoint the pipeline is assembled
around the already-loaded, LoRA-carrying transformer (no second copy) with the small VAE,
which visits the device only while sampling. So the 7B text encoder never shares the device
with the transformer and the optimizer.

Training math is untouched: no gradients, the transformer's train/eval mode is restored, the
noise comes from a private CPU generator and the global RNG is forked around sampling.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import torch
from PIL import Image

from ..engine.devices import free_memory
from ..engine.editor import lora_in_compute_dtype
from ..engine.encoding_memo import EncodingMemo
from ..engine.savers import Savers
from . import faults, samples
from .cache import encoding_pipeline
from .data import Pair, load_validation_pairs, sized_image, target_size
from .lora_io import ADAPTER

PREVIEW_ADAPTER = "preview"  # the few-step LoRA's name beside the run's own adapter
CHEAP_NOTE = ("cheap previews: fewer steps and no CFG, unlike what a deployment at the model "
              "card's settings shows")

log = logging.getLogger("studio.trainer")


def validation_pairs(args) -> list[Pair]:
    """The first --max_samples validation pairs ([] when there are none or sampling is off)."""
    if args.max_samples < 1 or args.sample_steps == 0:
        return []
    return load_validation_pairs(args)[: args.max_samples]


class SampleRenderer:
    def __init__(self, model_path: Path, pipeline_class: str, pairs: list[Pair], device,
                 dtype: torch.dtype, max_pixels: int, fixed: tuple[int, int] | None,
                 inference_steps: int, true_cfg_scale: float, savers: Savers = Savers(),
                 lora: Path | None = None, lora_strength: float = 1.0, model_card: dict | None = None):
        import diffusers

        self.cls = getattr(diffusers, pipeline_class)
        self.plus = pipeline_class == "QwenImageEditPlusPipeline"
        self.device, self.steps, self.cfg = device, inference_steps, true_cfg_scale
        self.dtype, self.lora, self.lora_strength = dtype, lora, lora_strength
        self.lora_loaded = False
        self.preview = preview_settings(inference_steps, true_cfg_scale, lora, lora_strength,
                                        savers, dtype, model_card)
        # The text encoder with the run's savers, as for the training pairs.
        pipe = encoding_pipeline(model_path, pipeline_class, device, dtype, savers)
        self.items = []
        for pair in pairs:
            # The same sizing the training pairs get (max_pixels, or the fixed size).
            inputs = [sized_image(p, max_pixels) for p in pair.inputs]
            with Image.open(pair.target) as target:  # only its size: no decoding
                width, height = target_size(target.width, target.height, max_pixels, fixed)
            item = {"pair": pair, "inputs": inputs, "width": width, "height": height,
                    "seed": zlib.crc32(pair.sample_id.encode("utf-8"))}
            item["embeds"] = self._encode(pipe, pair.prompt, inputs)
            if true_cfg_scale > 1:  # " " is the empty negative the model card uses
                item["negative"] = self._encode(pipe, " ", inputs)
            self.items.append(item)
        self.parts = {k: v for k, v in pipe.components.items() if k not in ("transformer", "text_encoder")}
        self.parts["vae"] = pipe.vae.to("cpu")
        # The inputs' VAE latents (the distribution's mode) never change: encode them at the
        # first checkpoint only; ~1 MP through the VAE is most of a small sample's time.
        self.latents = EncodingMemo(size=sum(len(p.inputs) for p in pairs))
        del pipe  # the text encoder goes here
        free_memory(device)

    def _prompt_images(self, pipe, inputs):
        """What the pipeline itself would hand its text encoder for these inputs (the edit
        pipeline: ~1 MP of the image; the Plus pipeline: ~384x384 of each)."""
        if self.plus:
            from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
                CONDITION_IMAGE_SIZE, calculate_dimensions)

            sizes = [calculate_dimensions(CONDITION_IMAGE_SIZE, im.width / im.height) for im in inputs]
            return [pipe.image_processor.resize(im, h, w) for im, (w, h) in zip(inputs, sizes)]
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

        w, h, _ = calculate_dimensions(1024 * 1024, inputs[0].width / inputs[0].height)
        return pipe.image_processor.resize(inputs[0], h, w)

    @torch.no_grad()
    def _encode(self, pipe, prompt: str, inputs):
        embeds, mask = pipe.encode_prompt(prompt=[prompt], image=self._prompt_images(pipe, inputs),
                                          device=self.device)
        if mask is None:  # all tokens valid; an explicit mask keeps diffusers from warning
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return embeds.cpu(), mask.cpu()

    def render(self, transformer, step: int, output: Path) -> Path:
        """One edit per validation pair with the transformer's current LoRA."""
        staging = samples.staging_dir(output, step)
        names = samples.file_names([it["pair"].sample_id for it in self.items])
        was_training = transformer.training
        scheduler = self.parts["scheduler"]
        pipe = self.cls(**{**self.parts, "scheduler": type(scheduler).from_config(scheduler.config)},
                        text_encoder=None, transformer=transformer)
        pipe.set_progress_bar_config(disable=True)
        if hasattr(pipe, "_encode_vae_image"):  # private in diffusers: cache it where it exists
            self.latents.wrap(pipe, "_encode_vae_image")
        entries = []
        try:
            transformer.eval()
            self._stack_preview_lora(pipe, transformer)
            self.parts["vae"].to(self.device)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                for item, name in zip(self.items, names):
                    entries.append(self._one(pipe, item, staging / name))
            faults.point("samples", step)  # edits made, not published
        finally:
            if self.lora_loaded:  # the run's adapter alone again, the preview's frozen
                transformer.set_adapters([ADAPTER], [1.0])
            transformer.train(was_training)
            self.parts["vae"].to("cpu")
            del pipe
            free_memory(self.device)
        index = {"step": step, "inference_steps": self.steps, "true_cfg_scale": self.cfg,
                 "preview": self.preview, "samples": entries}
        return samples.publish(staging, output, step, index)

    def _stack_preview_lora(self, pipe, transformer) -> None:
        """The few-step LoRA under the run's: loaded once (diffusers reads every key layout),
        both active while sampling. set_adapters also freezes what it leaves out, so the run's
        adapter is set back alone afterwards (render's finally)."""
        if self.lora is None:
            return
        if not self.lora_loaded:
            lora_in_compute_dtype(transformer, self.dtype)
            pipe.load_lora_weights(str(self.lora), adapter_name=PREVIEW_ADAPTER)
            self.lora_loaded = True
        transformer.set_adapters([ADAPTER, PREVIEW_ADAPTER], [1.0, self.lora_strength])

    def _one(self, pipe, item: dict, path: Path) -> dict:
        pair, on = item["pair"], lambda t: None if t is None else t.to(self.device)
        embeds, mask = item["embeds"]
        negative, negative_mask = item.get("negative", (None, None))
        image = pipe(image=item["inputs"] if self.plus else item["inputs"][0],
                     prompt_embeds=on(embeds), prompt_embeds_mask=on(mask),
                     negative_prompt_embeds=on(negative), negative_prompt_embeds_mask=on(negative_mask),
                     true_cfg_scale=self.cfg, num_inference_steps=self.steps,
                     height=item["height"], width=item["width"],
                     generator=torch.Generator("cpu").manual_seed(item["seed"])).images[0]
        image.save(path)
        entry = {"sample_id": pair.sample_id, "prompt": pair.prompt, "source": str(pair.inputs[0]),
                 "target": str(pair.target), "output": str(path), "seed": item["seed"]}
        if len(pair.inputs) > 1:
            entry["sources"] = [str(p) for p in pair.inputs]
        return entry


def preview_settings(steps: int, cfg: float, lora: Path | None, strength: float, savers: Savers,
                     dtype: torch.dtype, model_card: dict | None) -> dict:
    """How the sample edits are made, as the scoreboard reports it; `cheap` when they use fewer
    steps or less CFG than the model card and no few-step LoRA stands in for that."""
    card = model_card or {}
    cheap = lora is None and (steps < card.get("steps", steps) or cfg < card.get("true_cfg_scale", cfg))
    return {"inference_steps": steps, "true_cfg_scale": cfg,
            "lora": str(lora) if lora else None, "lora_strength": strength if lora else None,
            "savers": savers.describe(), "dtype": str(dtype).removeprefix("torch."),
            "model_card": card or None, "cheap": cheap}


def setup(args, info, device, dtype) -> SampleRenderer | None:
    """Rank 0's renderer, or None (no validation pairs, sampling off, or it failed: logged,
    training goes on)."""
    try:
        pairs = validation_pairs(args)
        if not pairs:
            return None
        fixed = (args.width, args.height) if args.width else None
        lora = Path(args.sample_lora).expanduser() if args.sample_lora else None
        renderer = SampleRenderer(info.path, info.pipeline_class, pairs, device, dtype,
                                  args.max_pixels, fixed, args.sample_inference_steps,
                                  args.sample_true_cfg_scale, Savers.of(args), lora,
                                  args.sample_lora_strength, info.sampler_defaults)
        log.info("sample edits: %d validation pair(s), %d steps, true_cfg_scale %g%s, %s%s",
                 len(pairs), args.sample_inference_steps, args.sample_true_cfg_scale,
                 f", under {lora.name} at {args.sample_lora_strength:g}" if lora else "",
                 f"every {args.sample_steps} steps" if args.sample_steps else "at each checkpoint",
                 f" ({CHEAP_NOTE})" if renderer.preview["cheap"] else "")
        return renderer
    except Exception as exc:  # noqa: BLE001 - samples are a view on training, never its end
        log.warning("sample edits disabled: %s: %s", type(exc).__name__, exc)
        free_memory(device)
        return None


def render(renderer: SampleRenderer | None, transformer, step: int, output: Path) -> None:
    if renderer is None:
        return
    try:
        folder = renderer.render(transformer, step, output)
        log.info("step %d: sample edits in %s", step, folder)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory while sampling
        log.warning("step %d: sample edits failed (training goes on): %s: %s", step,
                    type(exc).__name__, exc)
        free_memory(renderer.device)


def due(args, done: int, saved: bool, stopping: bool) -> bool:
    """Default: at each checkpoint; --sample_steps N: every N steps; 0: never. Not on a stop
    (the user wants the run to end)."""
    if stopping or args.sample_steps == 0:
        return False
    return done % args.sample_steps == 0 if args.sample_steps else saved
