"""The format registry's entry type and the one function every reader ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmpo.formats.mapping import Unmappable, place_markers


@dataclass(frozen=True)
class Format:
    """One source layout mmpo reads.

    Attributes:
        name: the `--from` / `data.train.format` key.
        kind: "pair" (preference pairs) or "sft" (supervised samples, for the builders).
        read_row: (row, media sink, options) -> record fields (see `pair_fields` / `sft_fields`).
        detect: (columns, first row) -> True when a table in this layout.
        heavy: columns holding media bytes, left out of the validation pass before training.
        options: (source path, table) -> options for `read_row` (LLaMA-Factory's dataset_info.json mapping).
        doc: one line for `mmpo data formats` and the README table.
    """

    name: str
    kind: str
    read_row: Callable[[dict, Any, dict], dict]
    detect: Callable[[set, dict], bool]
    heavy: tuple[str, ...] = ()
    options: Callable[[Path, Any], dict] | None = None
    doc: str = ""
    extra: dict = field(default_factory=dict)


def pair_fields(media: list, media_type: str, prompt: str, chosen: str, rejected: str, *, sink, meta: dict | None = None,
                rid: str | None = None, rejected_media: list | None = None, markers: bool = True) -> dict:
    """Record fields of one pair: media through `sink`, markers placed (see `place_markers`), texts checked."""
    if not media:
        raise Unmappable("no_media", "a text-only row (mmpo trains on image or video pairs)")
    for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise Unmappable("empty_text", f"{name} is empty")
    if markers:
        prompt = place_markers(prompt, media_type, len(media))
    fields = {"media": [sink.put(m) for m in media], "media_type": media_type, "prompt": prompt, "chosen": chosen,
              "rejected": rejected, "meta": {k: v for k, v in (meta or {}).items() if v not in (None, "")}}
    if rejected_media is not None:
        fields["rejected_media"] = [sink.put(m) for m in rejected_media]
        if fields["rejected_media"] == fields["media"]:
            del fields["rejected_media"]
    if chosen == rejected and "rejected_media" not in fields:
        raise Unmappable("no_preference", "chosen equals rejected on the same media")
    if rid is not None:
        fields["id"] = rid
    return fields


def sft_fields(media: list, media_type: str, prompt: str, answer: str, *, sink, meta: dict | None = None,
               rid: str | None = None) -> dict:
    """Record fields of one SFT sample (the builders' input)."""
    if not media:
        raise Unmappable("no_media", "a text-only row (the builders need image or video samples)")
    if not isinstance(answer, str) or not answer.strip():
        raise Unmappable("empty_text", "answer is empty")
    fields = {"media": [sink.put(m) for m in media], "media_type": media_type,
              "prompt": place_markers(prompt, media_type, len(media)), "answer": answer,
              "meta": {k: v for k, v in (meta or {}).items() if v not in (None, "")}}
    if rid is not None:
        fields["id"] = rid
    return fields


def as_list(value) -> list:
    """A media column as a list: None -> [], one value -> [value]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def has(cols: set, *names: str) -> bool:
    return set(names) <= cols


def sft_samples(turns: list, media: list, media_type: str, sink, meta: dict, name: str) -> list[dict]:
    """SFT samples of a conversation: one per answer, each with the earlier turns in its prompt.

    When the media markers sit anywhere but the start of the first user turn (LLaMA-Factory's interleaved
    tags), only the last answer is taken, with the whole history: an earlier cut would hold fewer markers
    than the row has media.
    """
    from mmpo.formats.mapping import MARKERS, turns_prompt
    from mmpo.formats.messages import split_last_answer

    if len(turns) < 2:
        raise Unmappable("bad_conversation", f"{name}: no answer in the conversation")
    marker = MARKERS[media_type]
    total = sum(text.count(marker) for _, text in turns)
    leading = total == 0 or turns[0][1].lstrip().startswith(marker * 1) and turns[0][1].count(marker) == total
    ends = range(1, len(turns), 2) if leading else [len(turns) - 1 if turns[-1][0] == "assistant" else len(turns) - 2]
    out = []
    for k in ends:
        history, answer = split_last_answer(turns[:k + 1], name)
        if [role for role, _ in history] != ["user", "assistant"] * (len(history) // 2) + ["user"]:
            raise Unmappable("bad_conversation", f"{name}: turns do not alternate user / assistant")
        prompt = turns_prompt(history, media_type, len(media))
        out.append(sft_fields(media, media_type, prompt, answer, sink=sink, meta={**meta, "turn": k // 2}))
    return out
