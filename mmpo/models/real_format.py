"""Shrunk checkpoints in the REAL hub formats of LLaVA-1.5, LLaVA-NeXT-Video and LLaVA-OneVision.

`make_tiny_model` writes word-level checkpoints: fast, but nothing like what a user downloads. The
checkpoints written here look like the published ones in everything but size:

- the real tokenizer (Llama-2 SentencePiece BPE, Qwen2 byte-level BPE), vocabulary size, special and
  media token ids, chat template and processor settings (resizing, anyres grids, feature strategy);
- the hub's weight-key layout. The hub still stores the transformers 4.3x names (`language_model.model.*`,
  `language_model.lm_head.*`, `vision_tower.*`, `multi_modal_projector.*`, `image_newline`), sharded with a
  `model.safetensors.index.json`; transformers 5 renames them on load, and so must our loading path.

Only widths, depths and the image side shrink (the SMALL_* values below; the real values are in the
comments), so a CPU test takes seconds yet meets what real checkpoints bring: ids above 32000, a 152k
vocabulary, SentencePiece's "▁" prefix, a template that puts a space before the answer.

Where each family's files come from (details and licences in mmpo/models/hub_files/<family>/SOURCE.md):
- llava: the verbatim non-weight files of llava-hf/llava-1.5-7b-hf, copied as they are, then resized.
- llava_next_video: no hub files available; built here from the same Llama-2 vocabulary (non-legacy
  SentencePiece handling, `<video>` 32000, `<image>` 32001) and the settings transformers' own conversion
  script and processor tests assert for llava-hf/LLaVA-NeXT-Video-7B-hf.
- llava_onevision: the Qwen2 tokenizer converted from llama.cpp's GGUF vocabulary (reproduces llama.cpp's
  test vectors) plus `<image>` 151646 / `<video>` 151647, and the settings of
  llava-hf/llava-onevision-qwen2-0.5b-ov-hf from transformers' conversion script and processor tests.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import torch

from mmpo.models.families import FAMILY_SPECS
from mmpo.models.shapes import CLIP_L336, LLAMA2_7B, PINPOINTS_7B, SIGLIP_SO400M

FIXTURES = Path(__file__).resolve().parent / "hub_files"  # package data: an installed mmpo makes these models too
REAL_FORMAT_FAMILIES = ("llava", "llava_next_video", "llava_onevision")  # saved in the hub's legacy LLaVA layout
VLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3")  # the newer families (tests/test_families.py)

# Shrunk shapes. Widths are multiples of 64 so bitsandbytes 4-bit works (docs/ENVIRONMENT.md §2c); two vision
# layers so LLaVA's `vision_feature_layer: -2` still picks a real layer.
SMALL_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
SMALL_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2)  # Llama-2 is multi-head (kv heads = heads), like the real 7B
SMALL_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1)  # Qwen2 uses grouped-query attention (0.5B: 14 heads, 2 kv heads)
# Qwen2-0.5B, LLaVA-OneVision-0.5B's language model (the source of the 152,000-row vocabulary below).
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2)
PATCH = 14        # both towers' real patch size, kept
SMALL_TILE = 56   # image / anyres tile side: real 336 (CLIP ViT-L/14-336) and 384 (SigLIP so400m/14-384);
                  # 56 px = 4x4 patches, so an image costs 16 base tokens instead of 576 / 729
NUM_SHARDS = 3    # llava-1.5-7b-hf is stored in 3 shards
# dtype of the hub's weight files (config.json torch_dtype; the conversion scripts' casts)
HUB_DTYPES = {"llava": torch.float16, "llava_next_video": torch.bfloat16, "llava_onevision": torch.float16}
# transformers 5 parameter-name prefix -> the hub's (transformers 4.3x) prefix; first match wins. The hub's
# towers keep CLIPVisionModel's / SiglipVisionModel's inner `vision_model.` level, which transformers 5 drops.
LEGACY_PREFIXES = (("model.language_model.", "language_model.model."),
                   ("lm_head.", "language_model.lm_head."),
                   ("model.vision_tower.", "vision_tower.vision_model."),
                   ("model.", ""))

# LLaVA-NeXT-Video-7B-hf renders "USER: <video>\nWhat is shown in this video? ASSISTANT:" (asserted in
# transformers' tests/models/llava_next_video/test_processor_llava_next_video.py): LLaVA-1.5's Vicuna template
# with a video placeholder after the images.
NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# LLaVA-OneVision renders "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant\n"
# (transformers' tests/models/llava_onevision/test_processor_llava_onevision.py). A full conversation's
# assistant turn renders "<|im_start|>assistant \n{answer}<|im_end|>" (with a space); the generation prompt has none.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# llava-1.5-7b-hf's files that a checkpoint folder holds (the hub's weight index is vendored only as evidence)
LLAVA_FILES = ("added_tokens.json", "chat_template.jinja", "chat_template.json", "config.json",
               "generation_config.json", "preprocessor_config.json", "processor_config.json",
               "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json.gz")


def make_real_format_model(family: str, out_dir, seed: int = 0, shrink: bool = True) -> Path:
    """Write a checkpoint folder in the family's real hub format with random weights.

    Args:
        family: one of REAL_FORMAT_FAMILIES.
        out_dir: folder to write (created).
        seed: torch seed for the random weights.
        shrink: True: small widths, depths and image side (seconds on a CPU), weights saved in the hub's
            legacy key layout, sharded with an index. False: the real sizes, config, tokenizer and processor
            only (no weights; e.g. to count a real prompt's tokens).

    Returns:
        The checkpoint folder; it loads with `mmpo.models.load_model` / the transformers Auto classes.
    """
    family = {"smolvlm": "idefics3"}.get(family, family)
    if family not in BUILDERS:
        raise ValueError(f"unknown real-format family {family!r}; choose one of {REAL_FORMAT_FAMILIES + VLM_FAMILIES}")
    if not FIXTURES.is_dir():
        raise FileNotFoundError(f"real-format files not found at {FIXTURES} (package data of mmpo: reinstall it)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    BUILDERS[family](out, shrink)
    if shrink and (family in VLM_FAMILIES or family == "qwen3_vl_moe"):
        save_hub_weights(family, out, seed)
    elif shrink:
        save_legacy_weights(family, out, seed)
    return out


# ---------------------------------------------------------------- families


def _llava(out: Path, shrink: bool) -> None:
    """llava-hf/llava-1.5-7b-hf's own files, verbatim; shrinking edits only sizes in three JSON files."""
    src = FIXTURES / "llava"
    for name in LLAVA_FILES:
        _copy_unpacked(src / name, out)
    if shrink:
        _edit_json(out / "config.json", _shrink_llava_config)
        _edit_json(out / "preprocessor_config.json", lambda c: c.update(
            size={"shortest_edge": SMALL_TILE}, crop_size={"height": SMALL_TILE, "width": SMALL_TILE}))


def _shrink_llava_config(config: dict) -> None:
    # The hub config names few text sizes (LlamaConfig's defaults are Llama-2-7B's), so state the small ones.
    # Patch size, vocabulary, token ids and feature layer/strategy stay as published.
    config["vision_config"].update(SMALL_VISION, image_size=SMALL_TILE)
    config["text_config"].update(SMALL_LLAMA)


def _llava_next_video(out: Path, shrink: bool) -> None:
    """LLaVA-NeXT-Video-7B-hf: Vicuna-7B-v1.5 (Llama-2 vocabulary), CLIP ViT-L/14-336, anyres, pooled video."""
    import transformers as tf

    tile = SMALL_TILE if shrink else 336
    pinpoints = [[h * tile // 336, w * tile // 336] for h, w in PINPOINTS_7B]
    base_tokens = (tile // PATCH) ** 2  # 576 real
    tok = vicuna_tokenizer()
    tok.add_tokens([_special("<video>"), _special("<image>")], special_tokens=True)  # 32000, 32001
    tok.pad_token = "<unk>"  # Vicuna has no pad token; the hub config's text pad_token_id is 0 (<unk>)
    clip = dict(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile})
    proc = tf.LlavaNextVideoProcessor(
        video_processor=tf.LlavaNextVideoVideoProcessor(**clip),
        image_processor=tf.LlavaNextImageProcessor(**clip, image_grid_pinpoints=pinpoints),
        tokenizer=tok, chat_template=NEXT_VIDEO_TEMPLATE, patch_size=PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1)  # CLS is dropped
    text = tf.LlamaConfig(**dict(SMALL_LLAMA if shrink else LLAMA2_7B, vocab_size=32064, max_position_embeddings=4096,
                                 rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                 rope_scaling={"type": "linear", "factor": 2.0}))
    vision = tf.CLIPVisionConfig(**dict(SMALL_VISION if shrink else CLIP_L336, image_size=tile, patch_size=PATCH,
                                        projection_dim=768))
    config = tf.LlavaNextVideoConfig(
        text_config=text, vision_config=vision, image_token_index=32001, video_token_index=32000,
        image_grid_pinpoints=pinpoints, image_seq_length=base_tokens,
        video_seq_length=base_tokens // 2,  # 288 real, the config default (a frame costs base/4 after pooling)
        spatial_pool_mode="average", spatial_pool_stride=2, vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    _save(out, "llava_next_video", proc, config)


def _llava_onevision(out: Path, shrink: bool) -> None:
    """llava-onevision-qwen2-0.5b-ov-hf: Qwen2 tokenizer and LM, SigLIP so400m/14-384, anyres_max_9."""
    import transformers as tf

    tile = SMALL_TILE if shrink else 384
    pinpoints = [[tile * i, tile * j] for i in range(1, 7) for j in range(1, 7)]  # 6x6 grid of tiles
    tok = qwen2_tokenizer()
    tok.add_tokens([_special("<image>"), _special("<video>")], special_tokens=True)  # 151646, 151647
    siglip = dict(size={"height": tile, "width": tile}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = tf.LlavaOnevisionProcessor(
        image_processor=tf.LlavaOnevisionImageProcessor(**siglip, image_grid_pinpoints=pinpoints),
        video_processor=tf.LlavaOnevisionVideoProcessor(**siglip), tokenizer=tok, chat_template=ONEVISION_TEMPLATE,
        num_image_tokens=(tile // PATCH) ** 2,  # 729 real; SigLIP has no CLS token ("full" strategy)
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    text = tf.Qwen2Config(**(SMALL_QWEN2 if shrink else QWEN2_05B), vocab_size=152000,  # 151,648 tokens, padded
                          max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
                          pad_token_id=151643, bos_token_id=151643, eos_token_id=151645)
    vision = tf.SiglipVisionConfig(**dict(SMALL_VISION if shrink else SIGLIP_SO400M, image_size=tile, patch_size=PATCH,
                                          vision_use_head=False))
    config = tf.LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_index=151646, video_token_index=151647,
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False)  # the 0.5B ties its embeddings, the 7B does not; untied keeps lm_head in the index
    _save(out, "llava_onevision", proc, config)


# ---------------------------------------------------------------- Qwen-VL and SmolVLM (Idefics3)
# The vendored hub files are copied verbatim, then only sizes change: widths, depths, image resolution (the
# processors' pixel limits / tile sizes) and the M-RoPE sections that must fit the smaller head width.

QWEN_FILES = {
    "qwen2_vl": ("config.json", "preprocessor_config.json", "chat_template.json", "generation_config.json",
                 "tokenizer_config.json"),
    "qwen2_5_vl": ("config.json", "preprocessor_config.json", "chat_template.json", "generation_config.json",
                   "tokenizer_config.json"),
    "qwen3_vl": ("config.json", "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
                 "generation_config.json", "tokenizer_config.json"),
}
IDEFICS3_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                  "generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                  "tokenizer.json.gz")
SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1)  # head width 32
# Qwen image pixel limits (real: 3,136 .. 12,845,056 px; Qwen3-VL 65,536 .. 16,777,216): a test image of
# up to 112 x 112 px costs at most 16 tokens (2 x 2 patches merge into one token)
SMALL_PIXELS = (28 * 28, 112 * 112)
# SmolVLM: 128-px tiles of 16-px patches, pixel shuffle 4 -> 4 tokens per tile (real 512 px -> 64 tokens), an
# image up to 256 px on its longest side (real 2,048): at most 2 x 2 tiles + the global image
SMALL_IDEFICS_TILE, SMALL_IDEFICS_LONGEST = 128, 256
# the hub's weight-key layout of Qwen2-VL / Qwen2.5-VL (their model.safetensors.index.json): the language model
# at `model.*`, the vision tower at `visual.*`; Qwen3-VL and SmolVLM are stored as transformers 5 names them
QWEN_LEGACY_PREFIXES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def qwen_bpe_files(out: Path) -> None:
    """vocab.json + merges.txt of the Qwen-VL tokenizers, byte-identical to the hub's (one BPE for Qwen2, 2.5
    and 3-VL; the same vocabulary and merges as the vendored Qwen2 tokenizer.json of LLaVA-OneVision)."""
    model = json.loads(gzip.decompress((FIXTURES / "llava_onevision" / "tokenizer.json.gz").read_bytes()))["model"]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False, separators=(",", ":")),
                                    encoding="utf-8")
    (out / "merges.txt").write_text("".join(" ".join(m) + "\n" for m in model["merges"]), encoding="utf-8")


def _qwen(family: str):
    def build(out: Path, shrink: bool) -> None:
        for name in QWEN_FILES[family]:
            _copy_unpacked(FIXTURES / family / name, out)
        qwen_bpe_files(out)
        if shrink:
            _edit_json(out / "config.json", _SHRINK_QWEN[family])
            for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
                if (out / name).is_file():
                    _edit_json(out / name, _shrink_qwen_pixels)
    build.__doc__ = f"{family}: the vendored hub files, verbatim, and the shared Qwen-VL BPE."
    return build


def _shrink_qwen_pixels(cfg: dict) -> None:
    lo, hi = SMALL_PIXELS
    if "size" in cfg and "longest_edge" in cfg["size"]:  # Qwen3-VL names the pixel limits size.{shortest,longest}_edge
        cfg["size"] = {"shortest_edge": lo, "longest_edge": hi}
    else:
        cfg.update(min_pixels=lo, max_pixels=hi)


def _shrink_qwen2_vl(cfg: dict) -> None:
    cfg.update(SMALL_TEXT, rope_scaling=dict(cfg["rope_scaling"], mrope_section=[4, 6, 6]))  # 16 = head 32 / 2
    cfg["vision_config"].update(depth=2, embed_dim=64, num_heads=2, hidden_size=SMALL_TEXT["hidden_size"])


def _shrink_qwen2_5_vl(cfg: dict) -> None:
    cfg.update(SMALL_TEXT, rope_scaling=dict(cfg["rope_scaling"], mrope_section=[4, 6, 6]))
    cfg["vision_config"].update(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                out_hidden_size=SMALL_TEXT["hidden_size"], fullatt_block_indexes=[1])


def _shrink_qwen3_vl(cfg: dict) -> None:
    text = cfg["text_config"]
    text.update(SMALL_TEXT, head_dim=32, rope_scaling=dict(text["rope_scaling"], mrope_section=[6, 5, 5]))
    cfg["vision_config"].update(depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                                out_hidden_size=SMALL_TEXT["hidden_size"], deepstack_visual_indexes=[1])


_SHRINK_QWEN = {"qwen2_vl": _shrink_qwen2_vl, "qwen2_5_vl": _shrink_qwen2_5_vl, "qwen3_vl": _shrink_qwen3_vl}

# Qwen3-VL-MoE [RECONSTRUCTION]: no hub config of it is vendored (docs/shared real-format notes hold none), so its
# checkpoint is Qwen3-VL's vendored files (the same processor, tokenizer and chat template) with the config's
# model types and the sparse-MLP keys of transformers' `Qwen3VLMoeTextConfig` (small: 4 experts, 2 per token)
QWEN3_VL_MOE_TEXT = dict(model_type="qwen3_vl_moe_text", num_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[])


def _qwen3_vl_moe(out: Path, shrink: bool) -> None:
    """qwen3_vl_moe: Qwen3-VL's vendored files with the MoE config keys (`QWEN3_VL_MOE_TEXT`)."""
    _qwen("qwen3_vl")(out, shrink)

    def moe(cfg: dict) -> None:
        cfg.update(model_type="qwen3_vl_moe", architectures=["Qwen3VLMoeForConditionalGeneration"])
        cfg["text_config"].update(QWEN3_VL_MOE_TEXT)
        cfg["vision_config"]["model_type"] = "qwen3_vl_moe"
    _edit_json(out / "config.json", moe)


def _idefics3(out: Path, shrink: bool) -> None:
    """SmolVLM-256M-Instruct's own files, verbatim (tokenizer.json included)."""
    for name in IDEFICS3_FILES:
        _copy_unpacked(FIXTURES / "idefics3" / name, out)
    if not shrink:
        return
    tile, longest = SMALL_IDEFICS_TILE, SMALL_IDEFICS_LONGEST
    per_tile = (tile // 16) ** 2 // 4 ** 2  # patches / scale_factor^2

    def config(cfg: dict) -> None:
        cfg["text_config"].update(SMALL_TEXT, head_dim=32)
        cfg["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=tile, max_image_size={"longest_edge": tile},
                                    size={"longest_edge": longest})
    _edit_json(out / "config.json", config)
    _edit_json(out / "preprocessor_config.json", lambda c: c.update(max_image_size={"longest_edge": tile},
                                                                    size={"longest_edge": longest}))
    _edit_json(out / "processor_config.json", lambda c: c.update(image_seq_len=per_tile))


BUILDERS = {"llava": _llava, "llava_next_video": _llava_next_video, "llava_onevision": _llava_onevision,
            "qwen2_vl": _qwen("qwen2_vl"), "qwen2_5_vl": _qwen("qwen2_5_vl"), "qwen3_vl": _qwen("qwen3_vl"),
            "qwen3_vl_moe": _qwen3_vl_moe,
            "idefics3": _idefics3}


# ---------------------------------------------------------------- tokenizers


def vicuna_tokenizer():
    """The Llama-2 vocabulary (llava-1.5-7b-hf's verbatim tokenizer.json) as Vicuna-7B-v1.5 / LLaVA-NeXT-Video ship it.

    Same 32,000 tokens and merges, non-legacy SentencePiece handling: a "▁" is prepended to the text's first
    word only (Metaspace "first"), not after every special token as llava-1.5's legacy normaliser does; that is
    what the NeXT-Video processor test's token ids show (`<video>` 32000 is followed by "\n" 13, not "▁" 29871).

    Returns:
        A `LlamaTokenizer` with <unk> 0, <s> 1, </s> 2 and no media tokens.
    """
    from transformers import LlamaTokenizer

    model = json.loads(gzip.decompress((FIXTURES / "llava" / "tokenizer.json.gz").read_bytes()))["model"]
    # add_bos_token as in Vicuna's tokenizer_config (transformers 5 leaves BOS off unless asked)
    return LlamaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], legacy=False,
                          add_bos_token=True, model_max_length=4096)


def qwen2_tokenizer():
    """Qwen2's tokenizer (151,643 BPE tokens + <|endoftext|>, <|im_start|>, <|im_end|>; eos <|im_end|>)."""
    import tempfile

    from transformers import AutoTokenizer

    src = FIXTURES / "llava_onevision"
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tokenizer.json.gz", "tokenizer_config.json"):
            _copy_unpacked(src / name, Path(tmp))
        return AutoTokenizer.from_pretrained(tmp)


def _special(token: str):
    from tokenizers import AddedToken

    # as the conversion scripts add media tokens: whole, never normalised or split
    return AddedToken(token, special=True, normalized=False)


# ---------------------------------------------------------------- files and weights


def _copy_unpacked(src: Path, out: Path) -> None:
    """Copy a vendored file into `out`; `name.gz` is written decompressed as `name`."""
    if src.suffix == ".gz":
        (out / src.stem).write_bytes(gzip.decompress(src.read_bytes()))
    else:
        shutil.copyfile(src, out / src.name)


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _save(out: Path, family: str, processor, config) -> None:
    """Processor (tokenizer, chat template, image/video processors), config and generation config."""
    from transformers import GenerationConfig

    config.architectures = [FAMILY_SPECS[family].transformers_class().__name__]
    config.dtype = HUB_DTYPES[family]
    processor.save_pretrained(out)
    config.save_pretrained(out)
    tok = processor.tokenizer
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(out)


def legacy_key(name: str) -> str:
    """A transformers 5 parameter name -> the hub's name, e.g. model.language_model.norm.weight ->
    language_model.model.norm.weight, lm_head.weight -> language_model.lm_head.weight,
    model.vision_tower.encoder.x -> vision_tower.vision_model.encoder.x."""
    for new, old in LEGACY_PREFIXES:
        if name.startswith(new):
            return old + name[len(new):]
    return name


def save_legacy_weights(family: str, out: Path, seed: int = 0) -> dict:
    """Random weights for the folder's config, saved like the hub: legacy names, NUM_SHARDS shards, an index.

    Returns:
        The saved state dict (legacy names -> tensors), for tests that compare what loads.
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig

    torch.manual_seed(seed)
    model = FAMILY_SPECS[family].transformers_class()(AutoConfig.from_pretrained(out))
    state = {legacy_key(k): v.detach().to(HUB_DTYPES[family]).contiguous() for k, v in model.state_dict().items()}
    names = list(state)
    per_shard = -(-len(names) // NUM_SHARDS)  # contiguous runs of tensors, none empty
    weight_map = {}
    for i in range(NUM_SHARDS):
        part = names[i * per_shard:(i + 1) * per_shard]
        file = f"model-{i + 1:05d}-of-{NUM_SHARDS:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return state


def save_hub_weights(family: str, out: Path, seed: int = 0) -> dict:
    """Random weights for a Qwen-VL / SmolVLM folder's config in the hub's key layout (one file, bf16).

    Returns:
        The saved state dict (hub names -> tensors).
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig

    torch.manual_seed(seed)
    model = FAMILY_SPECS[family].transformers_class()(AutoConfig.from_pretrained(out))
    prefixes = QWEN_LEGACY_PREFIXES if family in ("qwen2_vl", "qwen2_5_vl") else ()
    state = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue  # tied: the hub stores the embedding only
        hub = next((old + name[len(new):] for new, old in prefixes if name.startswith(new)), name)
        state[hub] = value.detach().to(torch.bfloat16).contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return state


# Qwen/Qwen2.5-VL-7B-Instruct's config.json values where they differ from the vendored 3B one (hub model card and
# config: 28 layers of width 3,584, 28 heads / 4 KV heads, untied 152,064-row embeddings; the vision tower is the
# 3B's, projecting to 3,584)
QWEN2_5_VL_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_window_layers=28)


def make_vlm_7b_config(family: str, out_dir) -> Path:
    """A 7B-shaped checkpoint folder (config, tokenizer, processor; no weights) for GPU benchmarks.

    Only Qwen2.5-VL-7B-Instruct: the vendored 3B files with the 7B's published widths (`QWEN2_5_VL_7B`).
    """
    if family != "qwen2_5_vl":
        raise ValueError(f"a 7B-shaped config is available for qwen2_5_vl only, not {family!r}")
    out = make_real_format_model(family, out_dir, shrink=False)

    def widen(cfg: dict) -> None:
        cfg.update(QWEN2_5_VL_7B)
        cfg["vision_config"]["out_hidden_size"] = QWEN2_5_VL_7B["hidden_size"]
    _edit_json(out / "config.json", widen)
    return out
