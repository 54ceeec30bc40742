"""Validation of one decoded record line: `pair_from_json` / `sft_from_json` build the record or raise a
RecordError naming file:line and the field (unknown keys, missing fields, wrong types, numbers that are not finite,
missing media, a pair that prefers nothing).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from mmpo.records.media_paths import MediaCheck, media_check
from mmpo.records.schema import (
    MEDIA_TYPES,
    SCHEMA_VERSION,
    AugSpec,
    PairRecord,
    SFTRecord,
    field_error,
    make_id,
    pair_id,
    short_repr,
)

_PAIR_FIELDS = {f.name for f in dataclasses.fields(PairRecord)} - {"where"}  # "where" is not written, only read
_SFT_FIELDS = {f.name for f in dataclasses.fields(SFTRecord)} - {"where"}
_PAIR_REQUIRED = ("media", "media_type", "prompt", "chosen", "rejected")
_SFT_REQUIRED = ("media", "media_type", "prompt", "answer")


def _media_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise field_error(where, name, "expected a non-empty list of relative paths")
    return tuple(value)


def _is_finite_number(value: Any) -> bool:
    """A JSON number that is finite. json.loads turns NaN / Infinity into floats; true / false are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _check_str(obj: dict, name: str, where: str, allow_empty: bool = False) -> None:
    v = obj.get(name)
    if not isinstance(v, str):
        raise field_error(where, name, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise field_error(where, name, "must not be empty")


def _check_optional_str(obj: dict, name: str, where: str) -> None:
    """A string when present: a list or object would otherwise be silently turned into its repr."""
    if name in obj and not isinstance(obj[name], str):
        raise field_error(where, name, f"expected a string, got {type(obj[name]).__name__} {short_repr(obj[name])}")


def _check_object(obj: dict, name: str, where: str) -> dict:
    value = obj.get(name, {})
    if not isinstance(value, dict):
        raise field_error(where, name, f"expected an object, got {type(value).__name__}")
    return dict(value)


def _check_weight(obj: dict, where: str) -> float | None:
    """`weight`: absent/null, or a finite number >= 0 (a NaN weight made every step holding the pair skip)."""
    weight = obj.get("weight")
    if weight is None:
        return None
    if not _is_finite_number(weight) or weight < 0:
        raise field_error(where, "weight", f"expected a finite number >= 0, got {short_repr(weight)}")
    return float(weight)


def _check_scores(obj: dict, where: str) -> dict:
    """`scores`: finite numbers, or lists of them (the augment builder's `clip_sim`).

    `delta` must be a single number: the CLIP-adjusted and DA-DPO losses turn it into a per-pair tensor,
    so anything else used to pass reading and crash in the middle of a run.
    """
    scores = _check_object(obj, "scores", where)
    for key, value in scores.items():
        if _is_finite_number(value):
            continue
        if key != "delta" and isinstance(value, list) and all(_is_finite_number(v) for v in value):
            continue
        expected = "a finite number" if key == "delta" else "a finite number or a list of them"
        raise field_error(where, f"scores.{key}", f"expected {expected}, got {short_repr(value)}")
    return scores


def _check_has_preference(obj: dict, media: tuple, rejected_media: tuple | None, bag: tuple | None,
                          where: str) -> None:
    """Refuse a pair that prefers nothing: the same answer on the same media gives exactly zero gradient.

    Conditional-media pairs (mDPO counterfactuals, the augment builder) repeat the answer on purpose: their
    rejection is other media, named in `rejected_media` or `rejected_bag`.
    """
    if obj["chosen"] == obj["rejected"] and bag is None and rejected_media in (None, media):
        raise field_error(where, "rejected", "equals 'chosen' on the same media, so the pair prefers nothing (zero "
                    "gradient); a conditional-media pair names its rejected media in rejected_media or rejected_bag")


def _check_common(obj: Any, fields: set, required: tuple, where: str) -> dict:
    if not isinstance(obj, dict):
        raise field_error(where, None, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - fields)
    if unknown:
        raise field_error(where, unknown[0], f"unknown key (valid: {sorted(fields)})")
    for name in required:
        if name not in obj:
            raise field_error(where, name, "missing")
    if obj["media_type"] not in MEDIA_TYPES:
        raise field_error(where, "media_type", f"expected one of {MEDIA_TYPES}, got {short_repr(obj['media_type'])}")
    _check_optional_str(obj, "id", where)
    return obj


def _checked_opening(obj: Any, fields: set, required: tuple, where: str, check: MediaCheck | None) -> tuple[str, ...]:
    """What both record kinds check first, in this order: the keys, the media type, the media paths (files under
    the root when `check` is given) and the prompt. Returns the media paths."""
    _check_common(obj, fields, required, where)
    media = _media_list(obj["media"], where, "media")
    if check is not None:
        check(media, where, "media")
    _check_str(obj, "prompt", where)
    return media


def _bag_specs(raw: Any, where: str) -> tuple[AugSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise field_error(where, "rejected_bag", "expected a non-empty list of {op, params, seed}")
    specs = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or not isinstance(s.get("op"), str) or set(s) - {"op", "params", "seed"}:
            raise field_error(where, f"rejected_bag[{i}]", "expected {op: str, params: dict, seed: int}")
        seed = s.get("seed", 0)
        if not isinstance(s.get("params", {}), dict) or isinstance(seed, bool) or not isinstance(seed, int):
            raise field_error(where, f"rejected_bag[{i}]", "params must be a dict and seed an int")
        specs.append(AugSpec(s["op"], dict(s.get("params", {})), seed))
    return tuple(specs)


def pair_from_json(obj: Any, where: str = "record", media_root: str | Path | MediaCheck | None = None) -> PairRecord:
    """Validate one decoded JSON object and build a PairRecord; errors name `where` and the field.

    Args:
        obj: the decoded line.
        where: "file:line", named in every error.
        media_root: folder whose media files must exist, or a `MediaCheck` shared across records (its cache);
            None: media are not checked.

    Returns:
        The record.

    Raises:
        RecordError: the first problem found.
    """
    check = media_check(media_root)
    media = _checked_opening(obj, _PAIR_FIELDS, _PAIR_REQUIRED, where, check)
    _check_str(obj, "chosen", where)
    _check_str(obj, "rejected", where)
    rejected_media = None
    if obj.get("rejected_media") is not None:
        rejected_media = _media_list(obj["rejected_media"], where, "rejected_media")
        if check is not None:
            check(rejected_media, where, "rejected_media")
    bag = _bag_specs(obj["rejected_bag"], where) if obj.get("rejected_bag") is not None else None
    _check_has_preference(obj, media, rejected_media, bag, where)
    weight = _check_weight(obj, where)
    scores = _check_scores(obj, where)
    meta = _check_object(obj, "meta", where)
    _check_optional_str(obj, "source", where)
    version = obj.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise field_error(where, "schema_version",
                          f"unsupported version {short_repr(version)} (this mmpo reads {SCHEMA_VERSION})")
    rid = obj.get("id") or pair_id(media, obj["prompt"], obj["chosen"], obj["rejected"], rejected_media, bag)
    return PairRecord(
        id=rid, media=media, media_type=obj["media_type"], prompt=obj["prompt"], chosen=obj["chosen"],
        rejected=obj["rejected"], rejected_media=rejected_media, rejected_bag=bag, weight=weight, scores=scores,
        source=obj.get("source", ""), meta=meta, schema_version=version, where=where,
    )


def sft_from_json(obj: Any, where: str = "record", media_root: str | Path | MediaCheck | None = None) -> SFTRecord:
    """Validate one decoded JSON object and build an SFTRecord (arguments as `pair_from_json`)."""
    media = _checked_opening(obj, _SFT_FIELDS, _SFT_REQUIRED, where, media_check(media_root))
    _check_str(obj, "answer", where)
    meta = _check_object(obj, "meta", where)
    rid = obj.get("id") or make_id(list(media), obj["prompt"], obj["answer"])
    return SFTRecord(rid, media, obj["media_type"], obj["prompt"], obj["answer"], meta, where=where)


PARSERS = {"pair": pair_from_json, "sft": sft_from_json}  # record kind -> validating parser
