"""Turn prompts, media and answers into model inputs for every LLaVA family.

Layout (the same one TRL's DPO collator builds before `flush_left`):

    prompt (LEFT-padded, BOS, chat template, media placeholders expanded by the processor)
    + answer (RIGHT-padded, no special tokens, EOS appended)

Example with B=2, pad=0, BOS=2, EOS=3 (media tokens omitted):

    prompt ids  [[0, 2, 7, 8], [2, 7, 8, 9]]     mask [[0,1,1,1],[1,1,1,1]]
    answer ids  [[5, 3, 0],    [5, 6, 3]]        mask [[1,1,0],[1,1,1]]
    joined ids  [[0,2,7,8,5,3,0], [2,7,8,9,5,6,3]]
    positions   [[0,0,1,2,3,4,4], [0,1,2,3,4,5,6]]    = (mask.cumsum(-1) - 1).clamp(min=0)
    labels      [[-100,-100,-100,-100,5,3,-100], [-100,-100,-100,-100,5,6,3]]

Position ids are passed explicitly so a left-padded row gets the same positions (hence the same
logits) as the unpadded example; `tests/test_models.py` checks this for every family.
"""

from __future__ import annotations

import numpy as np
import torch

from mmpo.models.answer_tokens import answer_token_rows, check_answer_tokens
from mmpo.models.positions import TOKEN_TYPES_KEY, continue_positions, extend_token_types, mask_positions

IGNORE_INDEX = -100  # the label value torch's cross-entropy and HF models skip
# per-token tensors (extended over answer tokens); everything else a processor returns is a media tensor
TEXT_KEYS = ("input_ids", "attention_mask", "position_ids", "labels", "token_type_ids", TOKEN_TYPES_KEY)
MEDIA_TYPES = ("image", "video")
# Where a prompt places its media (TRL / LLaMA-Factory convention, shared with the data-format readers): one literal
# marker per item, in order; a prompt without markers gets all its media before the text.
IMAGE_MARKER = "<image>"
MARKERS = {"image": IMAGE_MARKER, "video": "<video>"}


class MediaCountError(ValueError):
    """A prompt's `<image>` markers do not match the number of images it comes with."""


def user_content(prompt: str, media_type: str | None, n_media: int = 1) -> list[dict]:
    """The user turn's content parts: media placeholders where the prompt's markers are, else media first.

    The text between markers is kept as written (LLaMA-Factory replaces each marker in place); only the space
    between a marker and the start or end of the prompt goes, so "<image>\\nWhat is it?" and "What is it?" give
    the same turn.

    Raises:
        MediaCountError: the prompt has `<image>` (`<video>`) markers, but not one per media item.
    """
    if media_type is None:
        return [{"type": "text", "text": prompt}]
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type must be one of {MEDIA_TYPES} or None, got {media_type!r}")
    marker = MARKERS[media_type]
    if marker in prompt:
        pieces = prompt.split(marker)
        if len(pieces) - 1 != n_media:
            raise MediaCountError(f"the prompt has {len(pieces) - 1} {marker} marker(s) but {n_media} {media_type}(s); "
                                  f"write one {marker} per {media_type} where it belongs, or none ({media_type}s first)")
        if not pieces[0].strip():
            pieces[1] = pieces[1].lstrip()
        if not pieces[-1].strip():
            pieces[-2] = pieces[-2].rstrip()
        content = []
        for i, piece in enumerate(pieces):
            if piece.strip():
                content.append({"type": "text", "text": piece})
            if i < n_media:
                content.append({"type": media_type})
        return content
    return [{"type": media_type}] * n_media + [{"type": "text", "text": prompt}]


def prompt_text(processor, prompt: str, media_type: str | None, n_media: int = 1) -> str:
    """One user turn with its media parts (placeholders) and the prompt text, plus the generation prompt.

    Args:
        processor: a checkpoint's processor (carries the chat template).
        prompt: the question / instruction text (may place images with `<image>` markers, `user_content`).
        media_type: "image", "video" or None (text only).
        n_media: number of media items (several images: a multi-image family's prompt).

    Returns:
        The templated text, e.g. "USER: <image>\\nis there a cat ? ASSISTANT:".
    """
    messages = [{"role": "user", "content": user_content(prompt, media_type, n_media)}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def media_count(item) -> int:
    """Media items in one row's media: a list of images counts its length, anything else is one item."""
    return len(item) if isinstance(item, (list, tuple)) else 1


def _as_media_list(media, media_type: str) -> list:
    """Processors want a list of PIL images, or a list of (T,H,W,3) uint8 arrays for videos; rows with several
    images make it a list of lists (one per row), which multi-image processors take."""
    items = list(media)
    if any(isinstance(m, (list, tuple)) for m in items):
        return [list(m) if isinstance(m, (list, tuple)) else [m] for m in items]
    if media_type == "video":
        items = [np.asarray(v) for v in items]
        bad = [i for i, v in enumerate(items) if v.ndim != 4 or v.shape[-1] != 3]
        if bad:
            raise ValueError(f"videos must be uint8 arrays (T,H,W,3); item {bad[0]} has shape {items[bad[0]].shape}")
    return items


def encode_prompts(processor, prompts: list[str], media, media_type: str | None) -> dict:
    """Tokenise prompts with their media, LEFT-padded.

    Args:
        processor: a checkpoint's processor.
        prompts: B prompt texts (templated here with `prompt_text`).
        media: B PIL images or B uint8 (T,H,W,3) arrays (one per prompt), or per prompt a list of PIL images
            (several images: placed by the prompt's `<image>` markers, else before the text); None for text only.
        media_type: "image", "video" or None.

    Returns:
        dict with input_ids [B,Lp], attention_mask [B,Lp] and the media tensors the processor made
        (pixel_values [+ image_sizes] for images, pixel_values_videos for videos).
    """
    if media is None:
        texts = [prompt_text(processor, p, None) for p in prompts]
    else:
        texts = [prompt_text(processor, p, media_type, media_count(m)) for p, m in zip(prompts, media, strict=True)]
    return encode_templated(processor, texts, media, media_type)


def encode_templated(processor, texts: list[str], media, media_type: str | None) -> dict:
    """`encode_prompts` for texts that are already templated (e.g. the part of a prompt before the question)."""
    if media is not None and len(media) != len(texts):
        raise ValueError(f"{len(texts)} prompts but {len(media)} media items")
    kwargs = {}
    if media is not None:
        key = "images" if media_type == "image" else "videos"
        kwargs[key] = _as_media_list(media, media_type)
        video_processor = getattr(processor, "video_processor", None)
        if media_type == "video" and getattr(video_processor, "do_sample_frames", False):
            # the frames are already mmpo's sample (model.num_frames / fps); Qwen3-VL would sample them again
            kwargs["do_sample_frames"] = False
        if media_type == "image" and type(processor).__name__ == "VideoLlavaProcessor":
            # Video-LLaVA's image processor still defaults to the deprecated `pixel_values_images` key
            kwargs["return_legacy_image_output"] = False
    batch = processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)
    batch = dict(batch)
    if media is not None and media_type == "video" and "pixel_values_videos" not in batch:
        # an image-only processor (LLaVA-1.5, LLaVA-NeXT, SmolVLM) drops `videos` without a word: the model would
        # answer, and train, on the text alone
        raise ValueError(f"{type(processor).__name__} takes no video: this model cannot read video data; use a "
                         "video family (llava_next_video, video_llava, llava_onevision, qwen2_vl, qwen2_5_vl, "
                         "qwen3_vl)")
    batch.pop("token_type_ids", None)
    if "pixel_values_images" in batch:  # older Video-LLaVA processors; the model takes `pixel_values`
        batch["pixel_values"] = batch.pop("pixel_values_images")
    return batch


def encode_answers(processor, answers: list[str], add_eos: bool = True) -> dict:
    """Tokenise answers without special tokens (no BOS), append EOS, RIGHT-pad.

    The first call per tokenizer checks that answers tokenised alone equal the tokens they get after the
    prompt in the chat template (`check_answer_tokens`; an AnswerTokenError names the tokenizer setting).

    Args:
        processor: a processor or a tokenizer.
        answers: B answer texts.
        add_eos: append the EOS token id (the model learns to stop).

    Returns:
        dict with input_ids [B,La] (padded with pad_token_id) and attention_mask [B,La].
    """
    tok = getattr(processor, "tokenizer", processor)
    check_answer_tokens(processor)
    rows = answer_token_rows(tok, answers)
    if add_eos:
        rows = [r + [tok.eos_token_id] for r in rows]
    return right_pad(rows, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def right_pad(rows: list[list[int]], pad: int) -> dict:
    """Token id lists -> {input_ids, attention_mask} [B, longest], right-padded with `pad`."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def media_keys(batch: dict) -> list[str]:
    """Keys of `batch` that are media tensors (pixel_values, image_sizes, pixel_values_videos, ...)."""
    return [k for k in batch if k not in TEXT_KEYS]


position_ids_from_mask = mask_positions  # the 1-D rule (`mmpo.models.positions`), under its old name


def join_prompt_answer(prompt_batch: dict, answer_batch: dict, prompt_pos: torch.Tensor | None = None) -> dict:
    """One plain model input: prompt + answer, explicit positions, labels on answer tokens only.

    Args:
        prompt_batch: output of `encode_prompts` (left-padded).
        answer_batch: output of `encode_answers` (right-padded), same batch size.
        prompt_pos: the prompt's positions from `mmpo.models.positions.prompt_positions` (needed for M-RoPE
            families; None: 1-D positions from the mask).

    Returns:
        dict with input_ids, attention_mask, position_ids, labels [B, Lp+La] (+ mm_token_type_ids extended
        over the answer, where the processor gave them) and the prompt's media tensors.
    """
    p_ids, p_mask = prompt_batch["input_ids"], prompt_batch["attention_mask"]
    a_ids, a_mask = answer_batch["input_ids"], answer_batch["attention_mask"]
    if p_ids.shape[0] != a_ids.shape[0]:
        raise ValueError(f"prompt batch has {p_ids.shape[0]} rows, answer batch {a_ids.shape[0]}")
    a_ids, a_mask = a_ids.to(p_ids.device), a_mask.to(p_ids.device)
    mask = torch.cat([p_mask, a_mask], dim=1)
    labels = torch.cat([torch.full_like(p_ids, IGNORE_INDEX), a_ids.masked_fill(a_mask == 0, IGNORE_INDEX)], dim=1)
    if prompt_pos is None or prompt_pos.dim() == 2:  # 1-D: the mask's cumsum (answer padding repeats the last)
        positions = position_ids_from_mask(mask)
    else:  # M-RoPE: the answer continues from the prompt's last position in every axis
        positions = torch.cat([prompt_pos, continue_positions(prompt_pos, a_ids.shape[1])], dim=-1)
    out = {"input_ids": torch.cat([p_ids, a_ids], dim=1), "attention_mask": mask, "position_ids": positions,
           "labels": labels, **extend_token_types(prompt_batch, [a_ids.shape[1]])}
    out.update({k: prompt_batch[k] for k in media_keys(prompt_batch)})
    return out
