"""The preference record: the one contract between builders and the trainer, plus SFT samples.

One JSON object per line, UTF-8 (a byte-order mark at the start is accepted). Records are validated on
read: bytes that are not UTF-8, unknown keys, missing fields, wrong types, numbers that are not finite,
missing media, a pair that prefers nothing and a repeated pair id are errors that name the file, the line
and the field. Training reads through `scan_records`: one streaming pass validates every line, and only
the byte offsets of the good lines are kept (`RecordFile` parses a record again when a batch needs it).
Chat templating happens only when a record becomes model input (`mmpo.models.inputs`), never here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import operator
import os
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MEDIA_TYPES = ("image", "video")


class RecordError(ValueError):
    """A bad line in a record file; the message names file, line and field."""


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


def pair_id(media, prompt, chosen, rejected, rejected_media=None, rejected_bag=None) -> str:
    """The id a pair gets from its content; builders call this so rebuilt pairs keep their ids."""
    bag = [s.to_json() if isinstance(s, AugSpec) else s for s in (rejected_bag or [])]
    return make_id(list(media), prompt, chosen, rejected, list(rejected_media or []), bag)


# -- validation -------------------------------------------------------------------------------

_PAIR_FIELDS = {f.name for f in dataclasses.fields(PairRecord)} - {"where"}  # "where" is not written, only read
_SFT_FIELDS = {f.name for f in dataclasses.fields(SFTRecord)} - {"where"}
_PAIR_REQUIRED = ("media", "media_type", "prompt", "chosen", "rejected")
_SFT_REQUIRED = ("media", "media_type", "prompt", "answer")


def _fail(where: str, field_name: str | None, msg: str) -> RecordError:
    return RecordError(f"{where}: {'field ' + repr(field_name) + ': ' if field_name else ''}{msg}")


def _short(value: Any, limit: int = 80) -> str:
    """repr of a bad value for an error message, cut so a huge value cannot flood the log."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _media_list(value: Any, where: str, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, name, "expected a non-empty list of relative paths")
    return tuple(value)


def resolve_media(root: str | Path, rel: str) -> Path:
    """Resolve `rel` under `root`; paths may not escape the root (no `..`, no absolute paths).

    The check is on the path as written, not on symlink targets: a data file must not reach outside the
    root, but a link the user put inside it may point anywhere (the Hugging Face cache keeps each file as
    a link from `snapshots/` into `blobs/`).
    """
    root = Path(os.path.abspath(root))
    path = Path(os.path.normpath(root / rel))
    if path != root and root not in path.parents:
        raise ValueError(f"media path {rel!r} escapes the media root {str(root)!r}")
    return path


class MediaCheck:
    """Checks that media paths name files under a root, remembering the answer for each distinct path.

    Pair files name the same image or clip many times (several questions per image, several pairs per
    question). Stat-ing the path again for every record took 57 of the 67 s spent reading 848k pairs
    (benchmarks/RESULTS.md), so each distinct path is checked once per read. Memory stays bounded: only the
    `max_paths` most recently used answers are kept. The rule is `resolve_media`'s.
    """

    def __init__(self, root: str | Path, max_paths: int = 65536):
        self.root = Path(os.path.abspath(root))
        self.max_paths = max_paths
        self._known: OrderedDict[str, str] = OrderedDict()  # relative path -> "" (usable) or what is wrong

    def problem(self, rel: str) -> str:
        """What is wrong with media path `rel` ("" when it is a file under the root)."""
        if rel in self._known:
            self._known.move_to_end(rel)
            return self._known[rel]
        try:
            full = resolve_media(self.root, rel)
            msg = "" if full.is_file() else f"missing media file {str(full)!r}"
        except ValueError as exc:
            msg = str(exc)
        self._known[rel] = msg
        if len(self._known) > self.max_paths:
            self._known.popitem(last=False)
        return msg

    def __call__(self, paths: tuple[str, ...], where: str, name: str) -> None:
        """Raise RecordError naming `where` and field `name` for the first unusable path."""
        for rel in paths:
            msg = self.problem(rel)
            if msg:
                raise _fail(where, name, msg)


def _media_check(media_root: str | Path | MediaCheck | None) -> MediaCheck | None:
    if media_root is None or isinstance(media_root, MediaCheck):
        return media_root
    return MediaCheck(media_root)


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
        raise _fail(where, name, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise _fail(where, name, "must not be empty")


def _check_optional_str(obj: dict, name: str, where: str) -> None:
    """A string when present: a list or object would otherwise be silently turned into its repr."""
    if name in obj and not isinstance(obj[name], str):
        raise _fail(where, name, f"expected a string, got {type(obj[name]).__name__} {_short(obj[name])}")


def _check_object(obj: dict, name: str, where: str) -> dict:
    value = obj.get(name, {})
    if not isinstance(value, dict):
        raise _fail(where, name, f"expected an object, got {type(value).__name__}")
    return dict(value)


def _check_weight(obj: dict, where: str) -> float | None:
    """`weight`: absent/null, or a finite number >= 0 (a NaN weight made every step holding the pair skip)."""
    weight = obj.get("weight")
    if weight is None:
        return None
    if not _is_finite_number(weight) or weight < 0:
        raise _fail(where, "weight", f"expected a finite number >= 0, got {_short(weight)}")
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
        raise _fail(where, f"scores.{key}", f"expected {expected}, got {_short(value)}")
    return scores


def _check_has_preference(obj: dict, media: tuple, rejected_media: tuple | None, bag: tuple | None,
                          where: str) -> None:
    """Refuse a pair that prefers nothing: the same answer on the same media gives exactly zero gradient.

    Conditional-media pairs (mDPO counterfactuals, the augment builder) repeat the answer on purpose: their
    rejection is other media, named in `rejected_media` or `rejected_bag`.
    """
    if obj["chosen"] == obj["rejected"] and bag is None and rejected_media in (None, media):
        raise _fail(where, "rejected", "equals 'chosen' on the same media, so the pair prefers nothing (zero "
                    "gradient); a conditional-media pair names its rejected media in rejected_media or rejected_bag")


def _check_common(obj: Any, fields: set, required: tuple, where: str) -> dict:
    if not isinstance(obj, dict):
        raise _fail(where, None, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - fields)
    if unknown:
        raise _fail(where, unknown[0], f"unknown key (valid: {sorted(fields)})")
    for name in required:
        if name not in obj:
            raise _fail(where, name, "missing")
    if obj["media_type"] not in MEDIA_TYPES:
        raise _fail(where, "media_type", f"expected one of {MEDIA_TYPES}, got {_short(obj['media_type'])}")
    _check_optional_str(obj, "id", where)
    return obj


def _bag_specs(raw: Any, where: str) -> tuple[AugSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "rejected_bag", "expected a non-empty list of {op, params, seed}")
    specs = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or not isinstance(s.get("op"), str) or set(s) - {"op", "params", "seed"}:
            raise _fail(where, f"rejected_bag[{i}]", "expected {op: str, params: dict, seed: int}")
        seed = s.get("seed", 0)
        if not isinstance(s.get("params", {}), dict) or isinstance(seed, bool) or not isinstance(seed, int):
            raise _fail(where, f"rejected_bag[{i}]", "params must be a dict and seed an int")
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
    check = _media_check(media_root)
    _check_common(obj, _PAIR_FIELDS, _PAIR_REQUIRED, where)
    media = _media_list(obj["media"], where, "media")
    if check is not None:
        check(media, where, "media")
    _check_str(obj, "prompt", where)
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
        raise _fail(where, "schema_version", f"unsupported version {_short(version)} (this mmpo reads {SCHEMA_VERSION})")
    rid = obj.get("id") or pair_id(media, obj["prompt"], obj["chosen"], obj["rejected"], rejected_media, bag)
    return PairRecord(
        id=rid, media=media, media_type=obj["media_type"], prompt=obj["prompt"], chosen=obj["chosen"],
        rejected=obj["rejected"], rejected_media=rejected_media, rejected_bag=bag, weight=weight, scores=scores,
        source=obj.get("source", ""), meta=meta, schema_version=version, where=where,
    )


def sft_from_json(obj: Any, where: str = "record", media_root: str | Path | MediaCheck | None = None) -> SFTRecord:
    """Validate one decoded JSON object and build an SFTRecord (arguments as `pair_from_json`)."""
    check = _media_check(media_root)
    _check_common(obj, _SFT_FIELDS, _SFT_REQUIRED, where)
    media = _media_list(obj["media"], where, "media")
    if check is not None:
        check(media, where, "media")
    _check_str(obj, "prompt", where)
    _check_str(obj, "answer", where)
    meta = _check_object(obj, "meta", where)
    rid = obj.get("id") or make_id(list(media), obj["prompt"], obj["answer"])
    return SFTRecord(rid, media, obj["media_type"], obj["prompt"], obj["answer"], meta, where=where)


# -- files ------------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_PARSERS = {"pair": pair_from_json, "sft": sft_from_json}


def decode_line(line: str, where: str) -> Any:
    """json.loads one line, raising RecordError that names `where` ("file:line")."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        # json's message may end in "at" itself ("Invalid control character at")
        raise RecordError(f"{where}: invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})") from None


def jsonl_lines(text: str) -> list[str]:
    """The lines of JSONL text, split on "\n" only (a final "\n" ends the last line, like `splitlines`).

    Not `str.splitlines()`: it also splits on U+2028, U+2029 and U+0085, which `json.dumps(ensure_ascii=False)`
    leaves raw inside strings (JSON escapes only U+0000-U+001F), and on a lone "\r", which JSON allows
    between tokens; either would cut a valid line in two. A "\r\n" line keeps its "\r" (JSON whitespace).
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def decode_bytes(raw: bytes, where: str) -> str:
    """A line's bytes as text; bytes that are not UTF-8 are a RecordError naming `where` and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                          "record files are UTF-8 text") from None


def iter_raw_lines(path: str | Path, hasher: Any = None) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number, byte offset, bytes) for every line of a file, streaming.

    A UTF-8 byte-order mark opening the file (Windows editors write one) is dropped: it is not part of the
    first record, and its offset points past it.

    Args:
        path: the file.
        hasher: a hashlib object fed every byte of the file, so the content digest comes with the same pass.
    """
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            if hasher is not None:
                hasher.update(raw)
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                raw, start = raw[len(_BOM):], start + len(_BOM)
            yield lineno, start, raw


def iter_lines(path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield ("file:line", text) for each non-blank line; RecordError at the first line that is not UTF-8."""
    for lineno, _, raw in iter_raw_lines(path):
        where = f"{path}:{lineno}"
        text = decode_bytes(raw, where)
        if text.strip():
            yield where, text


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, decoded object) for each non-blank line; `where` is "file:line"."""
    for where, line in iter_lines(path):
        yield where, decode_line(line, where)


def _stamp(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class RecordFile(Sequence):
    """The validated records of a JSONL file, parsed again from disk when indexed.

    It holds two integers per record (byte offset and line number) instead of the records: 13 MB instead of
    about 0.7 GB for a 200 MB file of 848k pairs. Indexing seeks to the line and parses it again (tens of
    microseconds, nothing next to a training step); slices give lists. A file changed since it was validated
    is an error, not a silent mix of old offsets and new bytes.

    Picklable, for DataLoader workers: the open file is not part of its state, and every process opens its
    own (a forked worker too, so processes never share one file position).

    Attributes:
        path: the file.
        kind: "pair" or "sft".
        digest: sha256 of the file's bytes (16 hex digits, as `mmpo.models.loading.file_digest`), computed
            while validating: the precomputed-reference cache key needs no second read of the file.
        media_types: {media type: "file:line" of its first record} (set by `scan_records`).
    """

    def __init__(self, path: str | Path, kind: str, offsets: array, linenos: array, digest: str,
                 stamp: tuple[int, int]):
        self.path, self.kind, self.digest = str(path), kind, digest
        self.media_types: dict[str, str] = {}
        self._offsets, self._linenos, self._stamp = offsets, linenos, stamp
        self._file, self._pid = None, None
        self._verdict = None  # background validation (`validate_in_background`): shared error text, "" = none yet
        self._media_root, self._check, self._validator = None, None, None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range ({len(self)} records)")
        self._raise_verdict()
        f = self._open()
        f.seek(self._offsets[i])
        where = self.where(i)
        if self._verdict is not None and self._check is None and self._media_root is not None:
            self._check = MediaCheck(self._media_root)
        # while the background pass has not reached it, a record is validated here, media included, before use
        return _PARSERS[self.kind](decode_line(decode_bytes(f.readline(), where), where), where, self._check)

    def _raise_verdict(self) -> None:
        """Stop at the bad line the background validation found (also in DataLoader workers: shared memory)."""
        if self._verdict is not None and self._verdict.value:
            raise RecordError(self._verdict.value.decode("utf-8", "replace"))

    def wait(self) -> None:
        """Block until the background validation has read every line; RecordError if it found a bad one.

        The trainer calls this before it saves the final weights, so a run never finishes on a bad file."""
        if self._validator is not None:
            self._validator.join()
        self._raise_verdict()

    def where(self, i: int) -> str:
        """"file:line" of record `i`."""
        return f"{self.path}:{self._linenos[i]}"

    def _open(self):
        """This process's open file, checked to be the bytes that were validated."""
        if self._file is None or self._pid != os.getpid():
            self.close()  # a forked worker must not share the parent's file position
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        st = os.fstat(self._file.fileno())
        if (st.st_size, st.st_mtime_ns) != self._stamp:
            raise RecordError(f"{self.path}: the file changed after it was validated; restart to read it again")
        return self._file

    def drop(self, indices: set[int]) -> None:
        """Leave out the records at `indices` (positions in this sequence)."""
        keep = [i for i in range(len(self)) if i not in indices]
        self._offsets = array("q", (self._offsets[i] for i in keep))
        self._linenos = array("q", (self._linenos[i] for i in keep))

    def close(self) -> None:
        """Close this process's file (the next access opens it again)."""
        if self._file is not None:
            self._file.close()  # in a forked child this closes the child's copy only
        self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None, "_validator": None, "_check": None}

    def __del__(self):
        self.close()

    def __repr__(self) -> str:
        return f"RecordFile({self.path!r}, {len(self)} {self.kind} records)"


def _id_hash(rid: str) -> int:
    """8 bytes standing for an id in the uniqueness check (far less memory than the id strings)."""
    return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")


def _repeated_ids(records: RecordFile, id_hashes: array) -> list[tuple[int, int, str]]:
    """(later, first, id) for every record whose id an earlier record has, in file order.

    Only 8-byte hashes of the ids were kept while validating; equal hashes are found by sorting, and only
    those few records are read again to compare the ids themselves (a hash collision is not a repeat).
    """
    hashes = np.frombuffer(id_hashes, dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")  # stable: records with equal hashes stay in file order
    ranked = hashes[order]
    runs: dict[int, list[int]] = {}
    for k in np.flatnonzero(ranked[1:] == ranked[:-1]):
        runs.setdefault(int(ranked[k]), [int(order[k])]).append(int(order[k + 1]))
    repeats = []
    for members in runs.values():
        first_of: dict[str, int] = {}
        for i in members:
            rid = records[i].id
            if rid in first_of:
                repeats.append((i, first_of[rid], rid))
            else:
                first_of[rid] = i
    return sorted(repeats)


def _skip_or_raise(exc: RecordError, on_bad: str, skipped: list[str]) -> None:
    """Raise `exc`, or (on_bad "skip") log it once and count it in `skipped`."""
    if on_bad != "skip":
        raise exc
    skipped.append(str(exc))
    log.warning("skipping %s", exc)


BACKGROUND_MIN_BYTES = 32 << 20  # pair files from this size are validated in the background in error mode


def index_lines(path: str | Path, chunk_bytes: int = 16 << 20) -> tuple[array, array, str]:
    """(offsets, line numbers) of every non-blank line and the file's sha256 (16 hex digits), without parsing.

    numpy finds the newlines, 16 MB at a time; a line is blank when it holds only ASCII whitespace (only lines that
    open with whitespace are looked at one by one). A fraction of a second for 200 MB, against many seconds to
    decode and validate the lines (which `validate_in_background` then does).
    """
    offsets, linenos, hasher = array("q"), array("q"), hashlib.sha256()
    carry, base, lineno = b"", 0, 0  # carry: the unfinished line before `base`
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            hasher.update(chunk)
            buf = carry + chunk
            start0 = base - len(carry)
            arr = np.frombuffer(buf, dtype=np.uint8)
            ends = np.flatnonzero(arr == 10) if chunk else np.array([len(buf) - 1] if buf else [], dtype=np.int64)
            if len(ends):
                starts = np.concatenate(([0], ends[:-1] + 1))
                filled = arr[np.minimum(starts, len(arr) - 1)] > 32  # a line opening with a character: not blank
                for k in np.flatnonzero(~filled):  # the few lines opening with a space (or empty): look at them
                    filled[k] = bool(buf[int(starts[k]):int(ends[k]) + 1].strip())
                keep = np.flatnonzero(filled)
                offsets.frombytes((starts[keep] + start0).astype(np.int64).tobytes())
                linenos.frombytes((keep + lineno + 1).astype(np.int64).tobytes())
                lineno += len(starts)
                carry = buf[int(ends[-1]) + 1:]
            else:
                carry = buf
            base += len(chunk)
            if not chunk:
                break
    if len(offsets) and offsets[0] == 0:
        with open(path, "rb") as f:
            if f.read(len(_BOM)) == _BOM:  # a byte-order mark is not part of the first record
                offsets[0] = len(_BOM)
    return offsets, linenos, hasher.hexdigest()[:16]


def validate_in_background(path: str | Path, kind: str = "pair", media_root: str | Path | None = None
                           ) -> RecordFile:
    """A RecordFile usable at once, every line validated by another process while training starts (error mode only).

    Reading a big file used to hold step 1 back by the seconds it takes to validate every line in Python. Here
    only the newlines are indexed up front; a forked process then validates the lines in file order (the same checks,
    the repeated-id check at the end). A bad line still stops the run: the next record read raises its
    RecordError (the message sits in shared memory, so DataLoader workers see it too), and `wait()`, which the
    trainer calls before saving the final weights, raises it if training got there first. A record read before
    the validator reached it is validated when it is read, media included, so nothing unchecked reaches a batch.
    Only the first record's media type is known up front: a file mixing images and videos then fails at the first mixed
    batch (the collator's error) rather than before step 1.
    """
    import multiprocessing
    import threading

    stamp = _stamp(path)
    offsets, linenos, digest = index_lines(path)
    records = RecordFile(path, kind, offsets, linenos, digest, stamp)
    records._verdict = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                   else None).Array("c", 4096, lock=False)
    records._media_root = None if media_root is None else str(media_root)
    parse, check = _PARSERS[kind], _media_check(media_root)
    if len(offsets):
        with open(path, "rb") as f:  # the first record's media type, which the trainer looks at before step 1
            f.seek(offsets[0])
            where = records.where(0)
            try:
                records.media_types[parse(decode_line(decode_bytes(f.readline(), where), where), where).media_type] \
                    = where
            except RecordError as exc:
                raise exc from None

    def run() -> None:
        id_hashes = array("Q")
        try:
            for lineno, _, raw in iter_raw_lines(path):
                where = f"{path}:{lineno}"
                text = decode_bytes(raw, where)
                if not text.strip():
                    continue
                rec = parse(decode_line(text, where), where, check)
                if kind == "pair":
                    id_hashes.append(_id_hash(rec.id))
            if len(id_hashes if kind == "pair" else records) != len(records):
                raise RecordError(f"{path}: {len(id_hashes)} records validated but {len(records)} lines indexed "
                                  "(a line of Unicode spaces only?)")
            if kind == "pair":
                own = RecordFile(path, kind, offsets, linenos, digest, stamp)  # its own file handle
                for later, first, rid in _repeated_ids(own, id_hashes)[:1]:
                    raise _fail(own.where(later), "id", f"{_short(rid)} is already the id of {own.where(first)}; "
                                "ids must be unique")
                own.close()
        except Exception as exc:  # RecordError, or the file changing under it: the run must stop, naming why
            records._verdict.value = str(exc).encode("utf-8")[:4000]
            log.error("%s", exc)

    # A forked process, not a thread: a thread validating in Python would take the GIL from every Python op of the
    # training step (measured: step 1 came 4 s later on 848k pairs); the process uses another core instead.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods:
        records._validator = multiprocessing.get_context("fork").Process(target=run, name="mmpo-validate", daemon=True)
    else:
        records._validator = threading.Thread(target=run, name="mmpo-validate", daemon=True)
    records._validator.start()
    return records


def scan_records(path: str | Path, kind: str = "pair", media_root: str | Path | None = None,
                 on_bad: str = "error", background: bool | None = None) -> tuple[RecordFile, list[str]]:
    """Validate a record file in one streaming pass, keeping only where its good records are.

    Every line is decoded and validated up front, so a bad line fails before training starts, naming its
    file:line; with `on_bad="skip"` it is left out, logged once and listed in `skipped`. Pair ids must be
    unique (the precomputed reference and the builders' resume are keyed by id): a repeat is an error naming
    both lines, or a skip of the later one. SFT ids may repeat: nothing is keyed by them in training, and
    a repeated sample (the demo world asks some questions twice) is just weighted twice.

    Args:
        path: the JSONL file.
        kind: "pair" or "sft".
        media_root: folder whose media files must exist (None: not checked).
        on_bad: "error" (raise RecordError) or "skip".

    Returns:
        (records, skipped): a lazy `RecordFile` over the good lines (with the file's `digest`), and one
        "file:line: reason" string per skipped line.
    """
    if background is None:  # big pair files in error mode: step 1 need not wait for every line's validation
        background = on_bad == "error" and kind == "pair" and os.path.getsize(path) >= BACKGROUND_MIN_BYTES
    if background:
        if on_bad != "error":
            raise ValueError("background validation needs on_bad='error' (a skip must be counted before use)")
        return validate_in_background(path, kind, media_root), []
    parse, check = _PARSERS[kind], _media_check(media_root)
    hasher, offsets, linenos, id_hashes = hashlib.sha256(), array("q"), array("q"), array("Q")
    skipped: list[str] = []
    first_of_type: dict[str, str] = {}  # media type -> where its first record is
    stamp = _stamp(path)
    for lineno, offset, raw in iter_raw_lines(path, hasher):
        where = f"{path}:{lineno}"
        try:
            text = decode_bytes(raw, where)
            if not text.strip():
                continue
            rec = parse(decode_line(text, where), where, check)
        except RecordError as exc:
            _skip_or_raise(exc, on_bad, skipped)
            continue
        offsets.append(offset)
        linenos.append(lineno)
        first_of_type.setdefault(rec.media_type, where)
        if kind == "pair":
            id_hashes.append(_id_hash(rec.id))
    records = RecordFile(path, kind, offsets, linenos, hasher.hexdigest()[:16], stamp)
    records.media_types = first_of_type
    if kind == "pair":
        repeats = _repeated_ids(records, id_hashes)
        for later, first, rid in repeats:
            _skip_or_raise(_fail(records.where(later), "id", f"{_short(rid)} is already the id of "
                                 f"{records.where(first)}; ids must be unique"), on_bad, skipped)
        if repeats:
            records.drop({later for later, _, _ in repeats})
    return records, skipped


def is_own_jsonl(path: str | Path) -> bool:
    """Whether `path` is an mmpo record file (JSONL with `media` and `media_type`), not a set in another layout
    (a LLaVA conversation JSON, a LLaMA-Factory file, a parquet snapshot folder: see `mmpo.formats`)."""
    path = Path(path)
    if not path.is_file() or path.suffix in (".json", ".parquet", ".arrow"):
        return not path.exists()  # a missing path: let the usual reader say so
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw.decode("utf-8-sig"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    return True  # mmpo's reader names the bad line
                return not isinstance(first, dict) or "media_type" in first or "conversations" not in first and \
                    "messages" not in first and "chosen_messages" not in first and "prompt" not in first
    return True


def _read_all(path: str | Path, kind: str, media_root: str | Path | None) -> list:
    if not is_own_jsonl(path):  # the builders' inputs in the layouts people have, media read in place
        from mmpo.formats import read_in_place

        return read_in_place(path, kind, media_root)
    records, _ = scan_records(path, kind, media_root, background=False)
    try:
        return list(records)
    finally:
        records.close()


def read_pairs(path: str | Path, media_root: str | Path | None = None) -> list[PairRecord]:
    """Read and validate a whole pair file into memory (media checked to exist when `media_root` is given).

    For small files (builders, schedules); training streams big ones with `scan_records`.

    Raises:
        RecordError: the first bad line (file:line), or a repeated id (naming both lines).
    """
    return _read_all(path, "pair", media_root)


def read_sft(path: str | Path, media_root: str | Path | None = None) -> list[SFTRecord]:
    """Read and validate a whole SFT file into memory (see `read_pairs`; SFT ids may repeat).

    Also reads SFT sets in other layouts (LLaVA conversation JSON such as llava_v1_5_mix665k.json,
    LLaVA-Video-178K / ShareGPT4Video, LLaMA-Factory `messages` + images): one sample per answer, media paths
    as written (relative to the media root); rows that are no samples are logged, named and counted.
    """
    return _read_all(path, "sft", media_root)


def write_jsonl(path: str | Path, records: Iterable[Any], append: bool = False) -> int:
    """Write records (anything with `to_json()`, or dicts) one per line; returns the count.

    Appends are flushed and fsynced so a killed builder loses at most the line being written.
    """
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json() if hasattr(r, "to_json") else r, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def _trl_content(r: PairRecord) -> str | list[dict]:
    """The user message's content for TRL: the prompt as a string when the media go before it (TRL puts one image
    part per image first), typed parts when the prompt places its images with `<image>` markers."""
    marker = "<image>" if r.media_type == "image" else "<video>"
    if marker not in r.prompt:
        return r.prompt
    parts: list[dict] = []
    for k, text in enumerate(r.prompt.split(marker)):
        if k:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def to_trl_rows(records: Iterable[PairRecord], media_root: str | Path) -> list[dict]:
    """Rows in TRL's conversational vision-preference layout: prompt / chosen / rejected / images (+ id).

    The prompt is one user message and each answer one assistant message, so TRL's DPOTrainer renders them with
    the model's own chat template and inserts one image placeholder per entry of `images` (absolute paths;
    `to_trl_dataset` decodes them), all before the text; a prompt with `<image>` markers (several images placed
    in the text) becomes typed content parts, an image part at each marker. Video pairs keep their clip paths
    under `images` too: TRL 1.16 has no video collator, and that column name makes it skip its text-only
    preprocessing, so a custom `data_collator` can load the clips (benchmarks/train_vs_trl.py has one).

    Args:
        records: pairs whose preference is in the text (chosen != rejected on the same media).
        media_root: the folder their media paths are relative to (see `default_media_root`).

    Returns:
        One dict per pair.

    Raises:
        ValueError: a pair whose rejection is in the media (`rejected_media` / `rejected_bag`): TRL's DPO gives
            both answers the same media, so the pair would carry no preference at all.
    """
    rows = []
    for r in records:
        if r.rejected_media is not None or r.rejected_bag is not None:
            raise ValueError(f"pair {r.id}: its rejection is in the media (rejected_media / rejected_bag); "
                             "TRL's DPO trainer uses one media item for both answers, so it cannot train on it")
        rows.append({
            "prompt": [{"role": "user", "content": _trl_content(r)}],
            "chosen": [{"role": "assistant", "content": r.chosen}],
            "rejected": [{"role": "assistant", "content": r.rejected}],
            "images": [str(resolve_media(media_root, m)) for m in r.media],
            "id": r.id,
        })
    return rows


def to_trl_dataset(records: Iterable[PairRecord], media_root: str | Path):
    """A `datasets.Dataset` of `to_trl_rows`, ready for TRL's `DPOTrainer(train_dataset=...)`.

    Image paths are cast to `datasets.Image`, so images are decoded lazily, row by row, as TRL's collator
    reads them; video paths stay strings.
    """
    import datasets

    records = list(records)
    ds = datasets.Dataset.from_list(to_trl_rows(records, media_root))
    if records and all(r.media_type == "image" for r in records):
        ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))
    return ds


MANIFEST_FILE = "manifest.json"


def write_manifest(out_dir: str | Path, counts: dict, config: dict, seed: int, skipped: list | None = None,
                   media_root: str | Path | None = None, **extra: Any) -> Path:
    """Write `manifest.json` next to a built set: counts per kind, skipped items, config, seed, version.

    Args:
        out_dir: the set's folder.
        counts: counters per kind.
        config: the builder's config as a dict.
        seed: the build's seed.
        skipped: skipped inputs with their reasons.
        media_root: the folder the set's media paths are relative to; recorded so the set trains with no
            `data.media_root` (read back by `default_media_root`).
        **extra: more top-level keys.

    Returns:
        The manifest's path.
    """
    from mmpo import __version__

    path = Path(out_dir) / MANIFEST_FILE
    body = {"mmpo_version": __version__, "schema_version": SCHEMA_VERSION, "seed": seed, "counts": counts,
            "skipped": skipped or [], "config": config}
    if media_root is not None:
        root = Path(media_root).resolve()
        # Relative first: a set and its media usually travel together (a project folder copied to a cluster,
        # mounted in a container, renamed), and a relative path survives every such move while an absolute one
        # breaks on any new prefix. The absolute path covers the other move: the set folder alone, media left
        # in place. `default_media_root` tries them in that order.
        body["media_root"] = os.path.relpath(root, Path(out_dir).resolve())
        body["media_root_absolute"] = str(root)
    body.update(extra)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str))
    tmp.replace(path)
    return path


def _manifest_media_root(manifest: Path) -> Path | None:
    """The media root a manifest records (relative entry if that folder exists, else the absolute one)."""
    if not manifest.is_file():
        return None
    try:
        body = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"{manifest}: invalid JSON ({exc.msg} at line {exc.lineno}); fix or delete it, "
                          "or set the media root explicitly") from None
    if not isinstance(body, dict) or not body.get("media_root"):
        return None  # a manifest from before media roots were recorded, or not a builder's
    relative = (manifest.parent / body["media_root"]).resolve()
    absolute = body.get("media_root_absolute")
    if not relative.is_dir() and absolute and Path(absolute).is_dir():
        return Path(absolute)
    return relative  # when neither exists, the missing-media error names this path


def default_media_root(data_path: str | Path, explicit: str | Path | None = None) -> Path:
    """The folder a record file's media paths are relative to: the one rule every reader uses.

    Precedence: `explicit` (a config's `media_root`) > the media root recorded in the `manifest.json` beside
    the file (every builder writes one, so its output trains as is) > the file's own folder.

    Args:
        data_path: a pair or SFT JSONL file.
        explicit: a media root given by the user ("" or None = not given).

    Returns:
        The media root, absolute.
    """
    if explicit:
        return Path(explicit).resolve()
    folder = Path(data_path).resolve().parent
    recorded = _manifest_media_root(folder / MANIFEST_FILE)
    return recorded if recorded is not None else folder
