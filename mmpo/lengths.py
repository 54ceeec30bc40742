"""Sequence lengths before step 1: the limit that fits the model, and a pre-flight over the data.

A LLaVA-family sample is `prompt (media tokens included) + answer + EOS`. Media tokens dominate and vary
by family: 576 per image in LLaVA-1.5, 2,340-2,929 for one anyres image in LLaVA-NeXT / OneVision, 1,569
for 8 OneVision frames (shared real-format notes). A fixed default of 2048 rejected every OneVision and
NeXT-Video record mid-run, so the default limit is the model's own context length, and the pre-flight
reports the length distribution and how many records exceed the limit before any training happens.

Lengths are exact without decoding pixels: the templated text is tokenised as it will be (one placeholder
per media item), and the placeholders' expansion is measured once per distinct (media type, sizes) with
blank images or a blank clip of those sizes (LLaVA video processors resize frames; Qwen-VL keeps a video's
aspect ratio within its pixel limits, so the clip's frame size is read from the file's header).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmpo.models.answer_tokens import answer_token_rows, check_answer_tokens
from mmpo.models.families import family_of_processor, multi_image_families
from mmpo.models.inputs import IMAGE_MARKER, MARKERS, encode_prompts, prompt_text
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


def _video_size(path) -> tuple[int, int]:
    """(width, height) of a video's stream from its header (rotation metadata not applied)."""
    import av

    try:
        with av.open(str(path)) as box:
            stream = box.streams.video[0]
            return stream.codec_context.width, stream.codec_context.height
    except Exception as exc:  # noqa: BLE001 - PyAV's errors are not all OSErrors; the collator reports bad media
        raise OSError(f"{path}: {exc}") from None


def _media_size(media_type: str, path) -> tuple[int, int]:
    return _image_size(path) if media_type == "image" else _video_size(path)


def _image_size(path) -> tuple[int, int]:
    """(width, height) as `load_image` will return it: header only, EXIF rotations (5-8) swap the sides."""
    with Image.open(path) as img:
        w, h = img.size
        return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


class MediaTokens:
    """How many tokens a prompt's media placeholders expand to, measured once per (media type, sizes).

    Several images are measured together: a family may encode an image differently when it is one of several
    (LLaVA-OneVision drops the anyres tiles then), so their count is not the sum of single-image counts.
    """

    def __init__(self, processor, num_frames: int):
        self.processor, self.num_frames = processor, num_frames
        self.tok = getattr(processor, "tokenizer", processor)
        self.cache: dict[tuple, int] = {}

    def __call__(self, media_type: str, size: tuple[int, int] | None | list) -> int:
        sizes = tuple(size) if isinstance(size, list) else (size,)
        key = (media_type, sizes)
        if key not in self.cache:
            if media_type == "image":
                blanks = [Image.new("RGB", s, (127, 127, 127)) for s in sizes]
            else:  # videos: LLaVA processors resize frames (any size counts the same); Qwen-VL keeps the aspect
                w, h = sizes[0] or (64, 64)
                blanks = [np.full((self.num_frames, h, w, 3), 127, dtype=np.uint8)]
            media = blanks if len(blanks) > 1 else blanks[0]
            ids = encode_prompts(self.processor, [""], [media], media_type)["input_ids"][0].tolist()
            placeholder_only = self.tok(prompt_text(self.processor, "", media_type, len(blanks)),
                                        add_special_tokens=True)["input_ids"]
            self.cache[key] = len(ids) - len(placeholder_only) + len(blanks)
        return self.cache[key]


def check_record_media(rec, processor) -> None:
    """A record's media fit its prompt and the model: one `<image>` marker per image (or none), several images only
    for a multi-image family, `rejected_media` image for image. Raises ValueError naming the record's file:line."""
    where = getattr(rec, "where", "") or f"record {rec.id}"
    n = len(rec.media)
    marker = MARKERS.get(rec.media_type, IMAGE_MARKER)
    markers = rec.prompt.count(marker)
    if markers and markers != n:
        raise ValueError(f"{where}: the prompt has {markers} {marker} marker(s) but the record has {n} "
                         f"{rec.media_type}(s) in 'media'; write one {marker} per {rec.media_type} where it belongs, "
                         f"or none ({rec.media_type}s first)")
    rejected = getattr(rec, "rejected_media", None)
    if rejected and len(rejected) != n:
        raise ValueError(f"{where}: 'rejected_media' has {len(rejected)} item(s) but 'media' has {n}: "
                         "name the rejected side's media one for one")
    family = family_of_processor(processor)
    if n > 1 and family is not None and not family.multi_image:
        raise ValueError(f"{where}: {n} {rec.media_type}s in one record, but {family.name} models take one per "
                         f"prompt; families that take several images: {', '.join(multi_image_families())}")


def record_length(rec, processor, media_tokens: MediaTokens, media_root) -> int:
    """Tokens of `rec` as the collator builds it: prompt with all its media + the longer answer + EOS."""
    check_record_media(rec, processor)
    tok = media_tokens.tok
    n = len(rec.media)
    text = prompt_text(processor, rec.prompt, rec.media_type, n)
    prompt = len(tok(text, add_special_tokens=True)["input_ids"])  # n placeholders, one token each
    # the rejected side may show other media (a counterfactual image): an anyres model counts it by its own size
    sides = [rec.media] + ([rec.rejected_media] if getattr(rec, "rejected_media", None) else [])
    media = max(media_tokens(rec.media_type, [_media_size(rec.media_type, resolve_media(media_root, m)) for m in side])
                for side in sides)
    answers = [rec.answer] if hasattr(rec, "answer") else [rec.chosen, rec.rejected]
    answer = max(len(r) for r in answer_token_rows(tok, answers)) + 1
    return prompt - n + media + answer


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
        check_record_media(rec, processor)  # a data error, whatever on_bad_record says
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
