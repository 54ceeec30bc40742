"""Answer questions about images and videos, in batches: the model-facing half of evaluation.

Two answer modes (docs/DESIGN.md "Evaluation"):
- `generate`: greedy `generate_answers`, parsed by the benchmark's reference rule (what papers report); any
  prompt, e.g. CHAIR's "Please describe this image in detail.".
- `logits`: one forward per batch of questions; the answer is "yes" if score(yes) > score(no) at the first
  answer position (`mmpo.models.scoring`: `margin` = score(yes) - score(no), a log-odds between the answers).

Prefix reuse (logits mode): questions that share a media item (POPE: 6 per image per split, the same
images in all splits) encode media + chat-template text up to the question ONCE: one row per media item
holds `[head | question 1 | question 2 | ...]` with a block attention mask (the training's shared-prefix
layout, `mmpo.logprobs.packed_inputs`), several media items per forward, `batch_size` questions in all. The
split point comes from templating a sentinel prompt, so it follows any family's chat template; if the
tokens of prefix + suffix differ from the tokens of the whole prompt (a tokenizer merging across the
boundary) that media item falls back to the plain path, so answers never change.

Unreadable media (`mmpo.media.MediaError`): raised, unless the caller passes a `bad_media` dict (the runners'
`on_bad_media: skip`); then the file and its error are recorded there and its questions get no answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmpo.logprobs import packed_inputs, supports_packing
from mmpo.media import MediaError
from mmpo.models import encode_templated, generate_answers, prompt_text
from mmpo.models.inputs import right_pad
from mmpo.models.scoring import margins_plain, yes_no_ids, yes_no_margin

MODES = ("generate", "logits")
SENTINEL = "\x00MMPO_QUESTION\x00"  # never appears in a chat template, so the split point is unambiguous


@dataclass(frozen=True)
class Item:
    """One question to answer: `key` identifies it in predictions.jsonl, `media` is a file path."""

    key: tuple
    media: str
    prompt: str


def split_template(processor, media_type: str) -> tuple[str, str]:
    """(text before the question, text after it) of the family's templated prompt, via a sentinel."""
    text = prompt_text(processor, SENTINEL, media_type)
    if text.count(SENTINEL) != 1:
        raise ValueError("the chat template does not contain the prompt exactly once")
    head, tail = text.split(SENTINEL)
    return head, tail


def suffix_ids(processor, head: str, tail: str, prompts: list[str]) -> list[list[int] | None]:
    """Token ids each prompt adds after the head; None where tokenising in two parts changes a token."""
    tok = processor.tokenizer
    head_ids = tok(head)["input_ids"]
    out = []
    for full in tok([head + p + tail for p in prompts])["input_ids"]:
        clean = full[:len(head_ids)] == head_ids and len(full) > len(head_ids)
        out.append(full[len(head_ids):] if clean else None)
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def margins_packed(model, processor, head: str, media: list, suffixes: list[list[list[int]]], media_type: str,
                   ids: tuple) -> list[list[float]]:
    """Margins for many questions per media item, each media item and template head encoded ONCE.

    One forward, one row per media item, `mmpo.logprobs.packed_inputs` layout with the question suffixes as
    segments: `[head + media i | question i1 | question i2 | ...]`; every question sees the head and itself
    with the positions of its plain row, so its answer logits equal the plain path's. Only the logits at
    each question's last token reach the lm_head.

    Args:
        head: templated text before the question (`split_template`).
        media: N media items.
        suffixes: per media item, the token ids of each of its questions after the head (`suffix_ids`).

    Returns:
        per media item, one margin per question.
    """
    dev = _device(model)
    prefix = {k: v.to(dev) for k, v in encode_templated(processor, [head] * len(media), media, media_type).items()}
    pad = processor.tokenizer.pad_token_id or 0
    n_seg = max(len(s) for s in suffixes)
    segments = [right_pad([s[j] if j < len(s) else [] for s in suffixes], pad) for j in range(n_seg)]
    # column of each question's last token in the packed row (a row's missing segments: column 0, dropped below)
    starts = torch.tensor([0] + [seg["input_ids"].shape[1] for seg in segments]).cumsum(0)[:-1]
    last = torch.tensor([[starts[j] + len(s[j]) - 1 if j < len(s) else 0 for j in range(n_seg)]
                         for s in suffixes]) + prefix["input_ids"].shape[1]
    logits = model(**packed_inputs(model, prefix, segments), logits_to_keep=last.to(dev), use_cache=False).logits
    margins = yes_no_margin(logits.flatten(0, 1), *ids).view(len(media), n_seg).tolist()
    return [row[:len(s)] for row, s in zip(margins, suffixes)]


# ---------------------------------------------------------------- answering items


def _packed_forwards(items: list[Item], batch_size: int) -> list[list[tuple[str, list[Item]]]]:
    """Group questions by media item (pieces of <= batch_size), then pieces into forwards of <= batch_size questions."""
    by_media: dict[str, list[Item]] = {}
    for it in items:
        by_media.setdefault(it.media, []).append(it)
    pieces = [(path, group[s:s + batch_size]) for path, group in by_media.items()
              for s in range(0, len(group), batch_size)]
    forwards, count = [], batch_size  # count starts "full" so the first piece opens a forward
    for piece in pieces:
        if count + len(piece[1]) > batch_size:
            forwards.append([])
            count = 0
        forwards[-1].append(piece)
        count += len(piece[1])
    return forwards


def load_batch(paths: list[str], load_fn, bad_media: dict | None, cache: dict | None = None) -> dict:
    """{path: media} for `paths`, each loaded once (reused from `cache` when there).

    Args:
        paths: media paths (repeats allowed).
        load_fn: path -> media; raises `MediaError` for a missing or unreadable file.
        bad_media: None: a `MediaError` propagates. A dict: the error is recorded as {path: message}, the path
            is left out of the result, and a path already recorded there is not tried again.
        cache: media loaded for the previous batch.
    """
    out = {}
    for path in dict.fromkeys(paths):
        if cache is not None and path in cache:
            out[path] = cache[path]
        elif bad_media is None or path not in bad_media:
            try:
                out[path] = load_fn(path)
            except MediaError as exc:
                if bad_media is None:
                    raise
                bad_media[path] = str(exc)
    return out


def _answer_packed(model, processor, items: list[Item], media_type: str, load_fn, batch_size: int, ids: tuple,
                   emit_margins, bad_media: dict | None) -> None:
    """Logits mode with prefix reuse: `margins_packed` per forward; the plain path where tokens do not split."""
    head, tail = split_template(processor, media_type)
    for units in _packed_forwards(items, batch_size):
        loaded = load_batch([path for path, _ in units], load_fn, bad_media)
        units = [u for u in units if u[0] in loaded]  # skip mode: unreadable media drop out of this forward
        media = [loaded[path] for path, _ in units]
        suffixes = [suffix_ids(processor, head, tail, [it.prompt for it in group]) for _, group in units]
        packable = [i for i, s in enumerate(suffixes) if None not in s]
        if packable:
            packed = margins_packed(model, processor, head, [media[i] for i in packable],
                                    [suffixes[i] for i in packable], media_type, ids)
            for i, m in zip(packable, packed):
                emit_margins(units[i][1], m)
        for i in sorted(set(range(len(units))) - set(packable)):
            group = units[i][1]
            emit_margins(group, margins_plain(model, processor, [it.prompt for it in group], [media[i]] * len(group),
                                              media_type, ids))


def answer_items(model, processor, items: list[Item], media_type: str, load_fn, *, mode: str, batch_size: int,
                 max_new_tokens: int = 16, prefix_reuse: bool = False, on_batch=None,
                 bad_media: dict | None = None) -> dict:
    """Answer items in `mode`; returns {key: (answer, margin | None)} and calls on_batch(list) as it goes.

    Args:
        model: LLaVA-family model or PeftModel (eval mode).
        processor: its processor.
        items: questions with their media paths.
        media_type: "image" or "video".
        load_fn: path -> PIL image or (T,H,W,3) array.
        mode: "generate" or "logits".
        batch_size: questions per forward / generate call.
        max_new_tokens: generate mode cap.
        prefix_reuse: logits mode: one packed row per media item (`margins_packed`).
        on_batch: called with [(key, answer, margin)] after each batch (resumable writing).
        bad_media: None: an unreadable media file raises `MediaError`. A dict: such files are recorded in it
            ({path: error}, see `load_batch`) and their items left out of the result.

    Returns:
        {item.key: (answer, margin)} for every item whose media could be read.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    # only logits mode reads answer tokens (and checks them against the template); generate mode decodes text,
    # so CHAIR's captions do not depend on the tokenizer having clean "Yes" / "No" tokens
    ids = yes_no_ids(processor) if mode == "logits" else None
    results: dict = {}

    def emit(batch_items: list[Item], answers: list[str], margins: list) -> None:
        rows = [(it.key, a, m) for it, a, m in zip(batch_items, answers, margins)]
        results.update({k: (a, m) for k, a, m in rows})
        if on_batch is not None:
            on_batch(rows)

    def emit_margins(batch_items: list[Item], margins: list[float]) -> None:
        emit(batch_items, ["yes" if x > 0 else "no" for x in margins], margins)

    if mode == "logits" and prefix_reuse and supports_packing(model):  # else (flash attention): plain path
        _answer_packed(model, processor, items, media_type, load_fn, batch_size, ids, emit_margins, bad_media)
        return results
    loaded: dict[str, object] = {}
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        # keep only this batch's media in memory, loading each file once
        loaded = load_batch([it.media for it in chunk], load_fn, bad_media, loaded)
        chunk = [it for it in chunk if it.media in loaded]  # skip mode: unreadable media drop out
        if not chunk:
            continue
        media, prompts = [loaded[it.media] for it in chunk], [it.prompt for it in chunk]
        if mode == "logits":
            emit_margins(chunk, margins_plain(model, processor, prompts, media, media_type, ids))
        else:
            out = generate_answers(model, processor, prompts, media, media_type, max_new_tokens=max_new_tokens)
            emit(chunk, [o[0] for o in out], [None] * len(chunk))
    return results
