"""The embedded demo model: Qwen-Image-Edit's exact architecture at toy size, random weights.

No weights can be downloaded here, yet every test and a fresh `python app.py` need a model
folder that loads through the real diffusers pipelines. This module builds one locally, in
seconds, in the same diffusers layout as `Qwen/Qwen-Image-Edit` (or `-2509` with `plus=True`).
Only the widths and depths are tiny; every wiring choice that the pipelines, the LoRA code
and the trainer rely on (patch size, latent channels, VAE scale factor, mRoPE, vision patch
and merge sizes, special tokens, scheduler) is the real model's. Outputs are noise.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

MARKER = "studio_demo.json"
NATIVE_AREA = 256 * 256  # default output area for the demo (the real model works at ~1 MP)

# Qwen2.5-VL's special tokens, in the real vocabulary's order (ids 151643..151656 there).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Added tokens that follow them (151657..151664), not special: they survive decoding.
PLAIN_ADDED_TOKENS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]

# The system prompt of the edit templates (QwenImageEditPipeline and the Plus pipeline share
# it). The pipelines drop the first 64 hidden states, meant to be exactly this prefix; with
# every word of it in the vocabulary the tiny tokenizer also makes it 64 tokens, so the
# drop keeps the same meaning as with the real tokenizer.
SYSTEM_PROMPT = (
    "Describe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate."
)
TEMPLATE_PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
DROP_IDX = 64

# Typical instructions, so that short edits become a few whole-word tokens. Each is its own
# training text: an instruction follows <|vision_end|> directly, so its first word has no
# leading space, unlike the same word mid-sentence.
EDIT_EXAMPLES = [
    "Make the sky blue and the grass green.",
    "Add a red hat to the person on the left.",
    "Remove the car from the street and replace it with a tree.",
    "Change the background to a beach at sunset, keep the face and the pose.",
    "Turn the cat into a dog.",
    "Replace the text on the sign with 'Hello World'.",
    "Put sunglasses on him and a smile on her face.",
    "Convert it to a watercolor painting, an oil painting, a pencil sketch or a photo.",
    "Let the lighting be brighter, darker, warmer or colder.",
    "Give it black, white, gray, brown, yellow, orange, purple or pink colors.",
    "Rotate, zoom, crop, move, enlarge or shrink the object.",
    "Use a night, day, winter, summer, snow or rain style.",
    "Picture 1: Picture 2: Picture 3: 0 1 2 3 4 5 6 7 8 9",
]

# Qwen2.5-VL chat format (ChatML with vision placeholders), written for the demo.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif c['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- else -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

TEXT_HIDDEN = 64  # also the transformer's joint_attention_dim (3584 in the real model)


def _tokenizer():
    """A byte-level BPE trained here on the template and some English, wrapped as the real
    model's tokenizer class, with Qwen's special tokens appended after the learned vocabulary."""
    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    # Borrow Qwen's normalizer and pre-tokenizer (its split regex + byte level) from the class.
    qwen_backend = Qwen2Tokenizer().backend_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = qwen_backend.normalizer
    bpe.pre_tokenizer = qwen_backend.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=1024, min_frequency=1, show_progress=False,
        initial_alphabet=ByteLevel.alphabet(),
    )
    # Role names follow a special token directly, hence without a leading space.
    corpus = [SYSTEM_PROMPT, *EDIT_EXAMPLES, "system\n", "user\n", "assistant\n"]
    bpe.train_from_iterator(corpus, trainer)

    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    for token in SPECIAL_TOKENS + PLAIN_ADDED_TOKENS:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=merges,
        unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS, errors="replace", model_max_length=131072,
        chat_template=CHAT_TEMPLATE,
    )
    tok.add_tokens(PLAIN_ADDED_TOKENS)
    prefix_len = len(tok(TEMPLATE_PREFIX)["input_ids"])
    if prefix_len != DROP_IDX:  # the pipelines' fixed drop would then cut the wrong tokens
        raise RuntimeError(
            f"demo tokenizer makes the edit system prefix {prefix_len} tokens, not {DROP_IDX}"
        )
    return tok


def _text_encoder(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=(len(tok) + 63) // 64 * 64,  # padded like the real 152064
            hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1,  # head_dim 32, grouped-query like 28/4
            max_position_embeddings=128000, rms_norm_eps=1e-6,
            # mRoPE splits the head_dim/2 rotary frequencies over (time, height, width); the real
            # [16, 24, 24] serves head_dim 128, and the sections must sum to head_dim / 2.
            rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 6, 6]),
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
            out_hidden_size=TEXT_HIDDEN,  # vision tokens are fed into the text model
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2,  # as the real one
            window_size=112, fullatt_block_indexes=[1], tokens_per_second=2,
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _processor(tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    # Qwen2.5-VL's own pixel bounds: the ~1 MP conditioning image becomes ~1400 vision
    # tokens, which the tiny vision tower handles in well under a second on CPU.
    pixels = dict(min_pixels=3136, max_pixels=12845056)
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )


def _transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16,  # 16 latent channels x 2x2 patches
        num_layers=2, num_attention_heads=2, attention_head_dim=32,
        joint_attention_dim=TEXT_HIDDEN,
        axes_dims_rope=(4, 14, 14),  # real (16, 56, 56): same proportions, sums to head dim
        guidance_embeds=False,
    ).eval()


def _vae():
    from diffusers import AutoencoderKLQwenImage

    # temperal_downsample keeps 3 entries: the pipelines derive the scale factor 8 from its
    # length. latents_mean/std keep the class defaults, which are the real model's. The edit
    # pipelines always VAE-encode the input at ~1 MP, the demo's main CPU cost, hence the
    # narrowest width (base_dim 4: ~1.7 s per input on 2 cores, 8 costs ~1 s more) and one
    # res block per level (the real model: 96 and 2).
    return AutoencoderKLQwenImage(
        base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
        attn_scales=[], temperal_downsample=[False, True, True],
    ).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Qwen-Image's scheduler_config.json.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
        base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
        invert_sigmas=False, shift_terminal=0.02, use_karras_sigmas=False,
        use_exponential_sigmas=False, use_beta_sigmas=False,
        time_shift_type="exponential", stochastic_sampling=False,
    )


def _build_pipeline(plus: bool, seed: int):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    tok = _tokenizer()
    # Seed a private RNG stream so the weights depend on `seed` alone and the caller's
    # global RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _text_encoder(tok)
        transformer = _transformer()
        vae = _vae()
    cls = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    return cls(
        scheduler=_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tok,
        processor=_processor(tok), transformer=transformer,
    )


def _is_replaceable(folder: Path) -> bool:
    """Only an earlier demo build (or an empty folder) may be overwritten, never real weights."""
    return not folder.exists() or (folder / MARKER).is_file() or not any(folder.iterdir())


def _sibling(out: Path, tag: str) -> Path:
    # Hidden, unique, and on the same filesystem as `out`, so renames are atomic.
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_demo_model(out_dir: str | Path, plus: bool = False, seed: int = 0) -> Path:
    """Build the random-weight demo model into `out_dir` and return its resolved path.

    `plus=True` gives the multi-image Qwen-Image-Edit-2509 flavour (QwenImageEditPlusPipeline).
    The same `seed` gives byte-identical weights. The folder appears complete or not at all:
    it is written to a hidden sibling folder and renamed into place. An earlier demo build at
    `out_dir` is replaced; any other non-empty folder raises FileExistsError.
    """
    out = Path(out_dir).expanduser().resolve()
    if not _is_replaceable(out):
        raise FileExistsError(f"{out} exists and is not a demo model; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "building")
    tmp.mkdir()
    try:
        _build_pipeline(plus, seed).save_pretrained(tmp, safe_serialization=True)
        marker = {
            "demo": True, "native_area": NATIVE_AREA, "note": "random weights: outputs are noise",
            "pipeline": "QwenImageEditPlusPipeline" if plus else "QwenImageEditPipeline",
            "seed": seed,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            old = _sibling(out, "old")
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once renamed into place
    return out
