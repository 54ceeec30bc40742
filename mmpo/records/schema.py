"""The record types: a preference pair (`PairRecord`), an SFT sample (`SFTRecord`), an augmentation (`AugSpec`),
their ids, and `RecordError`, the error every bad line raises (naming file, line and field).

One JSON object per line, UTF-8; `to_json()` is what a record file holds. Validation of a decoded line:
`mmpo/records/validation.py`. Chat templating happens only when a record becomes model input
(`mmpo.models.inputs`), never here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MEDIA_TYPES = ("image", "video")


class RecordError(ValueError):
    """A bad line in a record file; the message names file, line and field."""


def field_error(where: str, field_name: str | None, msg: str) -> RecordError:
    """A RecordError naming `where` ("file:line") and the field."""
    return RecordError(f"{where}: {'field ' + repr(field_name) + ': ' if field_name else ''}{msg}")


def short_repr(value: Any, limit: int = 80) -> str:
    """repr of a bad value for an error message, cut so a huge value cannot flood the log."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class AugSpec:
    """One augmentation applied on the fly, deterministically: `mmpo.media.augment(media, spec)`.

    Attributes:
        op: name in `mmpo.media.AUGMENTATIONS` (e.g. "frame_shuffle", "mdpo_crop").
        params: op parameters (e.g. {"keep": 0.5}).
        seed: the op's own seed, so the same spec always gives the same pixels.
    """

    op: str
    params: dict = field(default_factory=dict)
    seed: int = 0

    def to_json(self) -> dict:
        return {"op": self.op, "params": dict(self.params), "seed": self.seed}


@dataclass(frozen=True)
class PairRecord:
    """A preference pair.

    Attributes:
        id: stable hash of media + prompt + chosen + rejected (+ rejected media/bag), see `make_id`.
        media: paths relative to the media root (one image, or one video; several for multi-image).
        media_type: "image" or "video".
        prompt: plain user text, no chat template and no media placeholder.
        chosen: preferred answer text.
        rejected: dispreferred answer text (equal to `chosen` for conditional-media pairs).
        rejected_media: media for the rejected side when the rejection is different media, same text.
        rejected_bag: PaMi-VDPO: K augmentation specs applied to `media` on the fly for the rejected side.
        weight: optional per-pair loss weight.
        scores: per-scorer numbers (e.g. {"clip": .., "gen": .., "fused": .., "delta": ..}).
        source: the builder that made the pair.
        meta: free-form extra information (ground-truth answer for guidance terms goes in meta["gt"]).
        schema_version: record schema version.
    """

    id: str
    media: tuple[str, ...]
    media_type: str
    prompt: str
    chosen: str
    rejected: str
    rejected_media: tuple[str, ...] | None = None
    rejected_bag: tuple[AugSpec, ...] | None = None
    weight: float | None = None
    scores: dict = field(default_factory=dict)
    source: str = ""
    meta: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    where: str = field(default="", compare=False, repr=False)  # "file:line" it was read from (not written)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "id": self.id,
            "media": list(self.media),
            "media_type": self.media_type,
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        if self.rejected_media is not None:
            out["rejected_media"] = list(self.rejected_media)
        if self.rejected_bag is not None:
            out["rejected_bag"] = [s.to_json() for s in self.rejected_bag]
        if self.weight is not None:
            out["weight"] = self.weight
        out.update(scores=dict(self.scores), source=self.source, meta=dict(self.meta))
        out["schema_version"] = self.schema_version
        return out


@dataclass(frozen=True)
class SFTRecord:
    """A supervised sample (media, prompt, answer): the input of SFT, the augment builder and VDPO.

    Attributes:
        id: stable hash (see `make_id`).
        media: paths relative to the media root.
        media_type: "image" or "video".
        prompt: plain user text.
        answer: target answer text.
        meta: free-form extra information.
    """

    id: str
    media: tuple[str, ...]
    media_type: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)
    where: str = field(default="", compare=False, repr=False)  # "file:line" it was read from (not written)

    def to_json(self) -> dict:
        return {"id": self.id, "media": list(self.media), "media_type": self.media_type,
                "prompt": self.prompt, "answer": self.answer, "meta": dict(self.meta)}


def make_id(*parts: Any) -> str:
    """Stable 16-hex-digit id from any JSON-serialisable parts (order matters)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: str | Path, length: int = 16) -> str:
    """sha256 of a file's bytes (its first `length` hex digits), read in 1 MiB blocks so a big file never sits in
    memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def pair_id(media, prompt, chosen, rejected, rejected_media=None, rejected_bag=None) -> str:
    """The id a pair gets from its content; builders call this so rebuilt pairs keep their ids."""
    bag = [s.to_json() if isinstance(s, AugSpec) else s for s in (rejected_bag or [])]
    return make_id(list(media), prompt, chosen, rejected, list(rejected_media or []), bag)
