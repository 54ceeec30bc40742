"""Sequence lengths before step 1: the limit that fits the model, and a pre-flight over the data.

A LLaVA-family sample is `prompt (media tokens included) + answer + EOS`. Media tokens dominate and vary
by family: 576 per image in LLaVA-1.5, 2,340-2,929 for one anyres image in LLaVA-NeXT / OneVision, 1,569
for 8 OneVision frames (shared real-format notes). A fixed default of 2048 rejected every OneVision and
NeXT-Video record mid-run, so the default limit is the model's own context length, and the pre-flight
reports the length distribution and how many records exceed the limit before any training happens.

Lengths are exact without decoding pixels: the templated text is tokenised as it will be (one media
placeholder), and the placeholder's expansion is measured once per distinct (media type, image size)
with a blank image or clip of that size (a video's token count does not depend on its resolution;
processors resize frames).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmpo.models.answer_tokens import answer_token_rows, check_answer_tokens
from mmpo.models.inputs import encode_prompts, prompt_text
from mmpo.records import resolve_media

log = logging.getLogger(__name__)

MAX_LENGTH_KEY = "data.max_length"


def context_length(model) -> int:
    """The model's text context length (`max_position_embeddings` of its language model)."""
    from mmpo.models import base_model

    config = base_model(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.max_position_embeddings)


def resolve_max_length(configured: int, model) -> int:
    """`data.max_length`, or the model's context length when it is 0 (the default)."""
    return configured if configured > 0 else context_length(model)


def _image_size(path) -> tuple[int, int]:
    """(width, height) as `load_image` will return it: header only, EXIF rotations (5-8) swap the sides."""
    with Image.open(path) as img:
        w, h = img.size
        return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


class MediaTokens:
    """How many tokens one media placeholder expands to, measured once per (media type, size)."""

    def __init__(self, processor, num_frames: int):
        self.processor, self.num_frames = processor, num_frames
        self.tok = getattr(processor, "tokenizer", processor)
        self.cache: dict[tuple, int] = {}

    def __call__(self, media_type: str, size: tuple[int, int] | None) -> int:
        key = (media_type, size)
        if key not in self.cache:
            if media_type == "image":
                blank = Image.new("RGB", size, (127, 127, 127))
            else:  # videos: the processor resizes frames, so any size gives the same count
                blank = np.full((self.num_frames, 64, 64, 3), 127, dtype=np.uint8)
            ids = encode_prompts(self.processor, [""], [blank], media_type)["input_ids"][0].tolist()
            placeholder_only = self.tok(prompt_text(self.processor, "", media_type),
                                        add_special_tokens=True)["input_ids"]
            self.cache[key] = len(ids) - len(placeholder_only) + 1
        return self.cache[key]


def record_length(rec, processor, media_tokens: MediaTokens, media_root) -> int:
    """Tokens of `rec` as the collator builds it: prompt with media + the longer answer + EOS."""
    tok = media_tokens.tok
    prompt = len(tok(prompt_text(processor, rec.prompt, rec.media_type), add_special_tokens=True)["input_ids"])
    # the rejected side may show other media (a counterfactual image): an anyres model counts it by its own size
    media = [rec.media[0]] + ([rec.rejected_media[0]] if getattr(rec, "rejected_media", None) else [])
    sizes = [_image_size(resolve_media(media_root, m)) if rec.media_type == "image" else None for m in media]
    answers = [rec.answer] if hasattr(rec, "answer") else [rec.chosen, rec.rejected]
    answer = max(len(r) for r in answer_token_rows(tok, answers)) + 1
    return prompt - 1 + max(media_tokens(rec.media_type, s) for s in sizes) + answer


@dataclass(frozen=True)
class LengthReport:
    """Token lengths over the records checked (all of them, or a seeded sample of a large file)."""

    checked: int  # records measured (unreadable media are left to the collator's rule)
    total: int
    limit: int
    p50: int
    p95: int
    longest: int
    over: list  # (record, length) of the checked records longer than `limit`

    def summary(self) -> str:
        scope = f"{self.checked} records" if self.checked == self.total else \
            f"{self.checked} of {self.total} records (a sample, or unreadable media left out)"
        text = (f"token lengths over {scope} (prompt with media + answer): median {self.p50}, p95 {self.p95}, "
                f"max {self.longest}; limit {MAX_LENGTH_KEY}={self.limit}")
        if self.over:
            text += f"; {len(self.over)} exceed it"
        return text


def preflight(records, processor, media_root, num_frames: int, limit: int, sample: int = 2000,
              seed: int = 0) -> LengthReport:
    """Measure record lengths before training; a file larger than `sample` records is sampled (seeded).

    Args:
        records: pair or SFT records (a sequence).
        processor: the model's processor.
        media_root: folder the media paths are relative to.
        num_frames: frames per video.
        limit: the resolved max length.
        sample: check at most this many records.
        seed: sample seed.

    Returns:
        A LengthReport.
    """
    n = len(records)
    idx = range(n) if n <= sample else sorted(random.Random(seed).sample(range(n), sample))
    media_tokens = MediaTokens(processor, num_frames)
    check_answer_tokens(processor)  # finds the template's answer prefix (SmolVLM's " ") before answers are counted
    lengths, over = [], []
    for i in idx:
        rec = records[i]
        try:
            length = record_length(rec, processor, media_tokens, media_root)
        except OSError:  # unreadable media: the collator reports it with its own rule (error or skip)
            continue
        lengths.append(length)
        if length > limit:
            over.append((rec, length))
    arr = np.array(lengths or [0])
    return LengthReport(len(lengths), n, limit, int(np.percentile(arr, 50)), int(np.percentile(arr, 95)),
                        int(arr.max()), over)


def too_long_message(rec, length: int, limit: int) -> str:
    """The one wording for a record over the limit: where it is, how long, which key to change."""
    where = getattr(rec, "where", "") or f"record {rec.id}"
    return (f"{where}: prompt with media + answer is {length} tokens, more than {MAX_LENGTH_KEY}={limit} "
            f"(raise {MAX_LENGTH_KEY}, or set data.on_bad_record: skip to leave such records out)")


def check_lengths(cfg, records, processor, media_root, model, is_main: bool) -> int:
    """Resolve `data.max_length` (0 = the model's context) and measure the data against it before step 1.

    With `on_bad_record: error`, a record over the limit stops the run here, naming its file and line and
    the key to change, instead of mid-run; with `skip` the collator leaves such records out (counted), unless
    every record is too long (nothing would train).
    """
    limit = resolve_max_length(cfg.data.max_length, model)
    report = preflight(records, processor, media_root, cfg.model.num_frames, limit, seed=cfg.seed)
    if is_main:
        log.info(report.summary())
    if report.over and (cfg.data.on_bad_record == "error" or len(report.over) == report.checked):  # nothing fits
        rec, length = report.over[0]
        raise ValueError(f"{too_long_message(rec, length, limit)}; {len(report.over)} of {report.checked} "
                         "checked records are too long")
    return limit
