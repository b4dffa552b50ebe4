"""Writing a pair's edit instruction from its images with a vision-language model.

Captioners describe one picture; an edit instruction says what changed between two. The
model shown both pictures is, by default, the Qwen-Image-Edit folder's own text encoder
(Qwen2.5-VL-7B) when its weights keep the language-model head (`lm_head`), else any local
Qwen2.5-VL / Qwen3-VL folder in transformers layout. It runs on the engine's device and
dtype with the text-encoder savers, and is freed by `release()`.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .devices import free_memory, pick_device, pick_dtype
from .savers import Savers, apply_text_encoder_savers

# The prompt that asks for the instruction. {examples} becomes the dataset's own instructions
# (a style to follow) or a note that there are none; {max_words} the length limit.
INSTRUCTION_PROMPT = (
    "Picture 1 is the image before an edit and Picture 2 is the same image after it. "
    "Write the one edit instruction that turns Picture 1 into Picture 2: an imperative "
    "sentence naming what changed (objects added, removed or replaced, colours, style, "
    "background, text, pose), not a description of either picture. At most {max_words} "
    "words, no quotes, nothing else.\n{examples}"
)
EXAMPLES_HEADER = "Write it in the style of these instructions from the same dataset:"
NO_EXAMPLES = "Example: Replace the red car with a blue bicycle."
DEFAULT_MAX_WORDS = 30
MAX_EXAMPLES = 5
# Each picture is shown at up to this area: ~330 vision tokens per image on Qwen2.5-VL
# (28-pixel merged patches), enough to see an edit, far less than the ~1 MP training size.
VL_IMAGE_PIXELS = 512 * 512
VL_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_vl")
SUGGESTED_VL = "Qwen/Qwen2.5-VL-7B-Instruct"


class VLFolderError(ValueError):
    """The folder cannot write instructions; the message says why and what to use."""


class EmptyInstruction(ValueError):
    """The model generated no usable text."""


@dataclass(frozen=True)
class VLModel:
    weights: Path     # the folder with config.json and the weights
    processor: Path   # the folder with the processor (and tokenizer) files
    label: str        # what the UI and the run record say is used
    is_demo: bool = False  # the demo model's random weights: the text is nonsense


def _weight_names(folder: Path) -> set[str]:
    """Tensor names of a folder's safetensors: from its index, else the files' headers."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        return {name for index in indexes for name in json.loads(index.read_text())["weight_map"]}
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            names.update(f.keys())
    return names


def has_lm_head(folder: Path) -> bool:
    return any(name.split(".")[-2:-1] == ["lm_head"] or name.startswith("lm_head.")
               for name in _weight_names(folder))


def _check_vl(weights: Path, processor: Path) -> None:
    config = weights / "config.json"
    if not config.is_file():
        raise VLFolderError(f"{weights} is not a vision-language model folder: no config.json. "
                            f"Give a local Qwen2.5-VL or Qwen3-VL folder (e.g. {SUGGESTED_VL}).")
    settings = json.loads(config.read_text())
    kind = settings.get("model_type") or ""
    if kind not in VL_MODEL_TYPES:
        shown = kind or settings.get("_class_name") or "unknown"
        raise VLFolderError(f"{weights} holds a {shown!r} model, not Qwen2.5-VL or "
                            f"Qwen3-VL ({', '.join(VL_MODEL_TYPES)}); give such a folder "
                            f"(e.g. {SUGGESTED_VL}).")
    if not any(weights.glob("*.safetensors")):
        raise VLFolderError(f"{weights} has no *.safetensors weights.")
    if not any((processor / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        raise VLFolderError(f"{processor} has no processor (preprocessor_config.json or "
                            f"processor_config.json): the images cannot be prepared.")


def choose_vl_model(model_folder: str | Path | None, vl_folder: str | Path | None = None) -> VLModel:
    """The VL model to use: `vl_folder` when given, else the edit model's own text encoder
    when its weights include lm_head; VLFolderError naming what to use otherwise."""
    if vl_folder:
        folder = Path(vl_folder).expanduser().resolve()
        if not folder.is_dir():
            raise VLFolderError(f"{folder}: no such folder. Give a local Qwen2.5-VL or Qwen3-VL "
                                f"folder (e.g. {SUGGESTED_VL}).")
        _check_vl(folder, folder)
        return VLModel(folder, folder, f"VL model {folder}")
    if not model_folder:
        raise VLFolderError(f"no model folder and no VL folder given; give a local Qwen2.5-VL "
                            f"or Qwen3-VL folder (e.g. {SUGGESTED_VL}).")
    root = Path(model_folder).expanduser().resolve()
    encoder, processor = root / "text_encoder", root / "processor"
    if not encoder.is_dir():
        raise VLFolderError(f"{root} has no text_encoder/ folder; give a local Qwen2.5-VL or "
                            f"Qwen3-VL folder instead (e.g. {SUGGESTED_VL}).")
    if not has_lm_head(encoder):
        raise VLFolderError(
            f"{encoder}'s weights have no lm_head (the language-model head), so it can encode "
            f"prompts but not write text. Give a VL folder to write instructions with, e.g. a "
            f"local copy of {SUGGESTED_VL} (--vl-model /path/to/Qwen2.5-VL-7B-Instruct).")
    _check_vl(encoder, processor)
    demo = (root / "studio_demo.json").is_file()
    return VLModel(encoder, processor, f"the model's own text encoder ({encoder})", demo)


def build_prompt(examples: list[str], max_words: int = DEFAULT_MAX_WORDS,
                 template: str = INSTRUCTION_PROMPT) -> str:
    shown = [e.strip() for e in examples if e and e.strip()][:MAX_EXAMPLES]
    lines = "\n".join([EXAMPLES_HEADER, *(f"- {e}" for e in shown)]) if shown else NO_EXAMPLES
    try:
        return template.format(examples=lines, max_words=int(max_words))
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"the prompt may only use {{examples}} and {{max_words}} as fields "
                         f"(double other braces): {exc}") from None


def clean_instruction(text: str, max_words: int = DEFAULT_MAX_WORDS) -> str:
    """The generated text as an instruction: its first non-empty line, without quotes or a
    leading label, cut to max_words. EmptyInstruction when nothing is left."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]", "", text or "")  # control bytes, undecodable
    line = next((l.strip() for l in text.splitlines() if l.strip()), "")
    line = re.sub(r"^(instruction|edit|answer)\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip().strip("\"'“”‘’`").strip()
    words = line.split()
    if not words:
        raise EmptyInstruction("the model generated no text for this pair")
    return " ".join(words[:int(max_words)])


def fit_area(image: Image.Image, pixels: int = VL_IMAGE_PIXELS) -> Image.Image:
    image = image.convert("RGB")
    if image.width * image.height > pixels:
        scale = (pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(28, round(image.width * scale)), max(28, round(image.height * scale))),
                             Image.BICUBIC)
    return image


class InstructionWriter:
    """One loaded VL model; `write` is serialised (one generation at a time per device)."""

    def __init__(self, vl: VLModel, device: str | None = None,
                 dtype: str | torch.dtype | None = None, savers: Savers | None = None,
                 max_new_tokens: int = 64):
        self.vl = vl
        self.device = pick_device(device)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(self.device, dtype)
        self.savers = savers or Savers()
        self.max_new_tokens = max_new_tokens
        self._model = self._processor = None
        self._lock = threading.Lock()

    def _load(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(self.vl.processor)
            model = AutoModelForImageTextToText.from_pretrained(self.vl.weights, dtype=self.dtype)
        except Exception as exc:  # noqa: BLE001 - safetensors, transformers raise many kinds
            raise VLFolderError(f"{self.vl.weights} could not be loaded as a VL model "
                                f"({type(exc).__name__}: {exc})") from exc
        model.eval()
        if not apply_text_encoder_savers(model, self.device, self.dtype, self.savers):
            model.to(self.device)
        self._model, self._processor = model, processor

    def write(self, sources: list[Image.Image], target: Image.Image, prompt: str,
              max_words: int = DEFAULT_MAX_WORDS, seed: int = 0) -> str:
        """One instruction for the edit from `sources` (Picture 1…) to `target` (the last)."""
        images = [fit_area(im) for im in [*sources, target]]
        content = []
        for n, _ in enumerate(images, 1):
            content += [{"type": "text", "text": f"Picture {n}: "}, {"type": "image"}]
        content.append({"type": "text", "text": prompt})
        with self._lock:
            if self._model is None:
                self._load()
            processor = self._processor
            text = processor.apply_chat_template([{"role": "user", "content": content}],
                                                 add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], images=images, return_tensors="pt").to(self.device)
            torch.manual_seed(seed)
            with torch.inference_mode():
                out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                           do_sample=False)
            generated = out[0, inputs["input_ids"].shape[1]:]
            decoded = processor.batch_decode(generated[None], skip_special_tokens=True)[0]
        return clean_instruction(decoded, max_words)

    def release(self) -> None:
        with self._lock:
            self._model = self._processor = None
        free_memory(self.device)
