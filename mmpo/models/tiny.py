"""Offline LLaVA-family checkpoints with random weights: tiny ones for tests and the demo, 7B-shaped
ones (config, tokenizer and processor only) for GPU benchmarks.

A checkpoint folder written here loads with `AutoModelForImageTextToText.from_pretrained(dir)` and
`AutoProcessor.from_pretrained(dir)` and never touches the hub. The recipe (word-level tokenizer with a
BOS post-processor, `num_additional_image_tokens=1`, image/video token counts per family) follows the
measured notes in docs/ENVIRONMENT.md §2d; the 7B shapes are those of the published configs
(llava-hf/llava-1.5-7b-hf, llava-hf/LLaVA-NeXT-Video-7B-hf, LanguageBind/Video-LLaVA-7B-hf,
llava-hf/llava-onevision-qwen2-7b-ov-hf).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmpo.models.families import FAMILY_ALIASES, FAMILY_SPECS
from mmpo.models.real_format import VLM_FAMILIES, make_real_format_model, make_vlm_7b_config
from mmpo.models.shapes import (
    CLIP_L336,
    LLAMA2_7B,
    PINPOINTS_7B,
    PINPOINTS_ONEVISION_7B,
    QWEN2_7B,
    SIGLIP_SO400M,
    VOCAB_7B,
)

# Families with a word-level tiny builder here; the others (Qwen-VL, SmolVLM) are built by the real-format
# factory (`mmpo.models.real_format`), which `make_tiny_model` calls for them.
FAMILIES = ("llava", "llava_next", "llava_next_video", "video_llava", "llava_onevision")
VIDEO_FAMILIES = tuple(f for f in FAMILIES if FAMILY_SPECS[f].video)
SIZES = ("tiny", "7b")

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<video>"]
# Common chat / QA words; the caller adds its own (the demo passes its world vocabulary). The tokenizer
# lowercases, so "USER" and "ASSISTANT" in the chat template map to "user" / "assistant".
BASE_WORDS = """
user assistant system the a an is are was were be been of in on at to from with without and or not no yes
what which who where when why how many much there here this that these those it its they them he she
image picture photo video clip frame frames scene describe description answer question please tell me
color colour shape object objects thing things left right top bottom middle center centre above below
next near far behind front inside outside between one two three four five six seven eight nine ten
zero red green blue yellow black white gray grey orange purple pink brown small big large little
square circle triangle cross bar ring dot frame cat dog person man woman car tree house table chair
do does did can could should would will has have had see seen shown show shows showing contains contain
any some all every each only also very more most less few several first second last then before after
during while moving moves move still appears appear happens happen doing action count number
""".split()
PUNCT = list(".,?!:;'\"()-/")
DIGITS = list("0123456789")

# Vicuna-style single-turn chat (LLaVA-1.5: "USER: <image>\n{prompt} ASSISTANT:"); media parts emit the
# placeholder the processor expands, text parts their text; assistant turns end with EOS.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{{- ' ASSISTANT: ' -}}"
    "{%- elif message['role'] == 'system' -%}{{- '' -}}"
    "{%- else -%}{%- if not loop.first -%}{{- ' ' -}}{%- endif -%}{{- 'USER: ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif part['type'] == 'video' -%}{{- '<video>\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
)

# Tiny shapes: hidden sizes are multiples of 64 so bitsandbytes 4-bit works (docs/ENVIRONMENT.md §2c).
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
TINY_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)


def build_tokenizer(words=None, vocab_size: int | None = None):
    """A word-level fast tokenizer with BOS added by a post-processor (docs/ENVIRONMENT.md §3 snippet).

    Args:
        words: extra words appended to the base vocabulary (lowercased, deduplicated).
        vocab_size: pad the vocabulary with filler tokens up to this size (7B shapes).

    Returns:
        A `PreTrainedTokenizerFast` with <pad> <unk> <s> </s> and image/video special tokens.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in SPECIALS + BASE_WORDS + PUNCT + DIGITS + [str(x).lower() for x in (words or [])]:
        vocab.setdefault(w, len(vocab))
    if vocab_size is not None:
        if len(vocab) > vocab_size:
            raise ValueError(f"vocabulary has {len(vocab)} words, more than vocab_size={vocab_size}")
        for i in range(vocab_size - len(vocab)):
            vocab[f"<filler_{i}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Punctuation splits "?" and ":" off words; Digits splits numbers into single digits.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    bos = vocab["<s>"]
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>",
                                   extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _text_config(family: str, size: str, tok):
    """Llama (Qwen2 for onevision) text config sized for `size`, with the tokenizer's special ids."""
    from transformers import LlamaConfig, Qwen2Config

    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id)
    if family == "llava_onevision":
        return Qwen2Config(**(QWEN2_7B if size == "7b" else TINY_TEXT), **ids)
    return LlamaConfig(**(LLAMA2_7B if size == "7b" else TINY_TEXT), **ids)


def _vision_config(family: str, size: str, image_size: int, patch: int):
    """CLIP vision config (SigLIP for onevision)."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    if family == "llava_onevision":
        shape = SIGLIP_SO400M if size == "7b" else dict(TINY_VISION, patch_size=patch, image_size=image_size)
        return SiglipVisionConfig(**shape)
    shape = dict(CLIP_L336) if size == "7b" else dict(TINY_VISION, patch_size=patch, image_size=image_size)
    shape.update(image_size=image_size, patch_size=patch)
    return CLIPVisionConfig(**shape)


def _sizes(family: str, size: str, image_size: int | None, num_frames: int | None,
           patch_size: int | None = None) -> tuple[int, int, int]:
    """(image px, patch px, frames). Tiny: patch = image/4 (16 base tokens per image) unless given."""
    if size == "7b":
        img = {"video_llava": 224, "llava_onevision": 384}.get(family, 336)
        frames = {"llava_next_video": 32}.get(family, 8)
        return img, 14, num_frames or frames
    img = image_size or 32
    patch = patch_size or img // 4
    if img % patch or (patch_size is None and img % 4):
        raise ValueError(f"image_size {img} must be a multiple of the patch size ({patch_size or 'image_size / 4'})")
    return img, patch, num_frames or (8 if family == "video_llava" else 4)


def _image_kwargs(img: int) -> dict:
    return dict(size={"shortest_edge": img}, crop_size={"height": img, "width": img})


def _processor(family: str, tok, img: int, patch: int, pinpoints):
    """The family's processor with small image/video processors and the chat template."""
    import transformers as tf

    common = dict(tokenizer=tok, chat_template=CHAT_TEMPLATE)
    # CLIP keeps a CLS token that the "default" strategy drops: 1 additional token (docs/ENVIRONMENT.md §2d).
    clip = dict(patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family == "llava":
        return tf.LlavaProcessor(image_processor=tf.CLIPImageProcessor(**_image_kwargs(img)), **clip, **common)
    next_img = tf.LlavaNextImageProcessor(**_image_kwargs(img), image_grid_pinpoints=pinpoints)
    if family == "llava_next":
        return tf.LlavaNextProcessor(image_processor=next_img, **clip, **common)
    if family == "llava_next_video":
        video = tf.LlavaNextVideoVideoProcessor(**_image_kwargs(img))
        return tf.LlavaNextVideoProcessor(video_processor=video, image_processor=next_img, **clip, **common)
    if family == "video_llava":
        return tf.VideoLlavaProcessor(image_processor=tf.VideoLlavaImageProcessor(**_image_kwargs(img)),
                                      video_processor=tf.VideoLlavaVideoProcessor(**_image_kwargs(img)),
                                      **clip, **common)
    # onevision: SigLIP has no CLS token; images are resized (no crop) to the tile size.
    square = dict(size={"height": img, "width": img})
    return tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(**square, image_grid_pinpoints=pinpoints),
        video_processor=tf.LlavaOnevisionVideoProcessor(**square),
        num_image_tokens=(img // patch) ** 2, vision_feature_select_strategy="full", **common)


def _model_config(family: str, size: str, tok, img: int, patch: int, frames: int, pinpoints):
    """The family's top-level config (image/video token ids from the tokenizer)."""
    import transformers as tf

    vision, text = _vision_config(family, size, img, patch), _text_config(family, size, tok)
    n = (img // patch) ** 2
    ids = dict(image_token_index=tok.convert_tokens_to_ids("<image>"))
    if family in VIDEO_FAMILIES:
        ids["video_token_index"] = tok.convert_tokens_to_ids("<video>")
    base = dict(vision_config=vision, text_config=text, **ids)
    if family == "llava":
        return tf.LlavaConfig(**base, image_seq_length=n)
    if family == "llava_next":
        return tf.LlavaNextConfig(**base, image_grid_pinpoints=pinpoints, image_seq_length=n)
    if family == "llava_next_video":
        # video tokens: (img/patch)^2 / 4 per frame (2x2 average pool, no CLS; docs/ENVIRONMENT.md §2d)
        return tf.LlavaNextVideoConfig(**base, image_grid_pinpoints=pinpoints, image_seq_length=n,
                                       video_seq_length=n // 4 * frames)
    if family == "video_llava":
        # video tokens: ((img/patch)^2 + 1) per frame, CLS kept (docs/ENVIRONMENT.md §2d)
        return tf.VideoLlavaConfig(**base, image_seq_length=n, video_seq_length=(n + 1) * frames)
    return tf.LlavaOnevisionConfig(**base, image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full",
                                   vision_aspect_ratio="anyres_max_9")


def _pinpoints(family: str, size: str, img: int):
    if size == "7b":
        return PINPOINTS_ONEVISION_7B if family == "llava_onevision" else PINPOINTS_7B
    return [[img, img]]  # tiny: one anyres tile, so an image costs base + 1 tile (+ newline tokens)


def make_tiny_model(family: str, out_dir, size: str = "tiny", words=None, seed: int = 0,
                    image_size: int | None = None, num_frames: int | None = None,
                    patch_size: int | None = None) -> Path:
    """Write an offline checkpoint folder (config, tokenizer, processor with chat template; weights if tiny).

    Args:
        family: one of FAMILIES, or a real-format family (qwen2_vl, qwen2_5_vl, qwen3_vl, idefics3 / smolvlm):
            those are written by `mmpo.models.real_format` (the real tokenizer and processor, shrunk weights;
            size "7b": the published 7B config, qwen2_5_vl only).
        out_dir: folder to write (created).
        size: "tiny" (random weights, seconds on CPU) or "7b" (published shapes; no weights file, use
            `build_model` on a GPU).
        words: extra vocabulary words (the demo passes its world vocabulary).
        seed: torch seed for the random weights.
        image_size: tiny image side in px (multiple of 4; patch = image_size / 4 -> 16 tokens). Default 32.
        num_frames: frames per video the config's video_seq_length assumes.
        patch_size: tiny patch side in px (default image_size / 4). image_size=336, patch_size=14 gives
            LLaVA-1.5's 576 image tokens with tiny widths (the real sequence layout, fast on a CPU).

    Returns:
        The checkpoint folder.
    """
    family = FAMILY_ALIASES.get(family, family)
    if family in (*VLM_FAMILIES, "qwen3_vl_moe"):  # no word-level recipe: the shrunk real-format one is the tiny one
        if size == "7b" and family == "qwen3_vl_moe":
            raise ValueError("--size 7b: no Qwen3-VL-MoE config is vendored to widen (the tiny one is reconstructed)")
        if size == "7b":
            return make_vlm_7b_config(family, out_dir)
        return make_real_format_model(family, out_dir, seed=seed)
    if family not in FAMILIES:
        names = (*FAMILIES, *(f for f in VLM_FAMILIES if f != "idefics3"), "qwen3_vl_moe", "smolvlm")
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(names)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img, patch, frames = _sizes(family, size, image_size, num_frames, patch_size)
    tok = build_tokenizer(words, vocab_size=VOCAB_7B.get(family, 32000) if size == "7b" else None)
    pinpoints = _pinpoints(family, size, img)
    proc = _processor(family, tok, img, patch, pinpoints)
    cfg = _model_config(family, size, tok, img, patch, frames, pinpoints)
    cfg.architectures = [FAMILY_SPECS[family].transformers_class().__name__]
    if size == "7b":
        cfg.save_pretrained(out)  # config only: never allocate 7B weights on a CPU machine
    else:
        torch.manual_seed(seed)
        FAMILY_SPECS[family].transformers_class()(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_model(model_dir, device="cuda", dtype=torch.bfloat16):
    """Instantiate a (7B-shaped) checkpoint's model from its config directly on `device` (random init).

    Weights are created on the target device, so a 7B model never passes through CPU memory.

    Args:
        model_dir: folder written by `make_tiny_model` (any size).
        device: target device (e.g. "cuda", "cpu", "meta").
        dtype: parameter dtype.

    Returns:
        The model in eval mode.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype)
    return model.eval()


def count_parameters(model_dir) -> int:
    """Number of parameters of a checkpoint's model, computed on the meta device (no memory)."""
    model = build_model(model_dir, device="meta", dtype=torch.float32)
    return sum(p.numel() for p in model.parameters())


def make_model_main(family: str, size: str, out, seed: int = 0) -> Path:
    """CLI entry (`mmpo make-model --family F --size tiny|7b --out DIR`): write the folder, print a summary.

    Args:
        family: as `make_tiny_model`'s (a word-level LLaVA family, or a real-format one).
        size: "tiny" or "7b".
        out: output folder.
        seed: the random weights' seed (a distillation student differs from its teacher by this).

    Returns:
        The checkpoint folder.
    """
    if Path(out).is_dir() and any(Path(out).iterdir()):  # files of another checkpoint would stay beside the new one
        raise FileExistsError(f"{out} is not empty: make-model writes a whole checkpoint folder; choose a new --out "
                              "or empty this one")
    path = make_tiny_model(family, out, size=size, seed=seed)
    n = count_parameters(path)
    weights = "random weights saved" if size == "tiny" else "config only; build with mmpo.models.build_model on a GPU"
    print(f"wrote {family} ({size}, {parameter_count(n)} parameters, {weights}) to {path}")
    return path


def parameter_count(n: int) -> str:
    """7_615_616_512 -> "7.62B", 1_234_567 -> "1.23M", 980 -> "980": a tiny model is not "0.000B"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
