"""The preference record: the one contract between builders and the trainer, plus SFT samples.

One JSON object per line. Records are validated on read: unknown keys, missing fields, wrong types
and missing media are errors that name the file, the line and the field. Chat templating happens
only when a record becomes model input (`mmpo.models.inputs`), never here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

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

_PAIR_FIELDS = {f.name for f in dataclasses.fields(PairRecord)}
_SFT_FIELDS = {f.name for f in dataclasses.fields(SFTRecord)}
_PAIR_REQUIRED = ("media", "media_type", "prompt", "chosen", "rejected")
_SFT_REQUIRED = ("media", "media_type", "prompt", "answer")


def _fail(where: str, field_name: str | None, msg: str) -> RecordError:
    return RecordError(f"{where}: {'field ' + repr(field_name) + ': ' if field_name else ''}{msg}")


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


def _check_media(paths: tuple[str, ...], media_root: str | Path | None, where: str, name: str) -> None:
    if media_root is None:
        return
    for rel in paths:
        try:
            full = resolve_media(media_root, rel)
        except ValueError as exc:
            raise _fail(where, name, str(exc)) from None
        if not full.is_file():
            raise _fail(where, name, f"missing media file {str(full)!r}")


def _check_str(obj: dict, name: str, where: str, allow_empty: bool = False) -> None:
    v = obj.get(name)
    if not isinstance(v, str):
        raise _fail(where, name, f"expected a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise _fail(where, name, "must not be empty")


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
        raise _fail(where, "media_type", f"expected one of {MEDIA_TYPES}, got {obj['media_type']!r}")
    return obj


def pair_from_json(obj: Any, where: str = "record", media_root: str | Path | None = None) -> PairRecord:
    """Validate one decoded JSON object and build a PairRecord; errors name `where` and the field."""
    _check_common(obj, _PAIR_FIELDS, _PAIR_REQUIRED, where)
    media = _media_list(obj["media"], where, "media")
    _check_media(media, media_root, where, "media")
    _check_str(obj, "prompt", where)
    _check_str(obj, "chosen", where)
    _check_str(obj, "rejected", where)
    rejected_media = None
    if obj.get("rejected_media") is not None:
        rejected_media = _media_list(obj["rejected_media"], where, "rejected_media")
        _check_media(rejected_media, media_root, where, "rejected_media")
    bag = None
    if obj.get("rejected_bag") is not None:
        raw = obj["rejected_bag"]
        if not isinstance(raw, list) or not raw:
            raise _fail(where, "rejected_bag", "expected a non-empty list of {op, params, seed}")
        specs = []
        for i, s in enumerate(raw):
            if not isinstance(s, dict) or not isinstance(s.get("op"), str) or set(s) - {"op", "params", "seed"}:
                raise _fail(where, f"rejected_bag[{i}]", "expected {op: str, params: dict, seed: int}")
            if not isinstance(s.get("params", {}), dict) or not isinstance(s.get("seed", 0), int):
                raise _fail(where, f"rejected_bag[{i}]", "params must be a dict and seed an int")
            specs.append(AugSpec(s["op"], dict(s.get("params", {})), int(s.get("seed", 0))))
        bag = tuple(specs)
    weight = obj.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise _fail(where, "weight", f"expected a number, got {weight!r}")
    for name in ("scores", "meta"):
        if not isinstance(obj.get(name, {}), dict):
            raise _fail(where, name, "expected an object")
    version = obj.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise _fail(where, "schema_version", f"unsupported version {version!r} (this mmpo reads {SCHEMA_VERSION})")
    rid = obj.get("id") or pair_id(media, obj["prompt"], obj["chosen"], obj["rejected"], rejected_media, bag)
    return PairRecord(
        id=str(rid), media=media, media_type=obj["media_type"], prompt=obj["prompt"], chosen=obj["chosen"],
        rejected=obj["rejected"], rejected_media=rejected_media, rejected_bag=bag,
        weight=None if weight is None else float(weight), scores=dict(obj.get("scores", {})),
        source=str(obj.get("source", "")), meta=dict(obj.get("meta", {})), schema_version=version, where=where,
    )


def sft_from_json(obj: Any, where: str = "record", media_root: str | Path | None = None) -> SFTRecord:
    """Validate one decoded JSON object and build an SFTRecord."""
    _check_common(obj, _SFT_FIELDS, _SFT_REQUIRED, where)
    media = _media_list(obj["media"], where, "media")
    _check_media(media, media_root, where, "media")
    _check_str(obj, "prompt", where)
    _check_str(obj, "answer", where)
    if not isinstance(obj.get("meta", {}), dict):
        raise _fail(where, "meta", "expected an object")
    rid = obj.get("id") or make_id(list(media), obj["prompt"], obj["answer"])
    return SFTRecord(str(rid), media, obj["media_type"], obj["prompt"], obj["answer"], dict(obj.get("meta", {})),
                     where=where)


# -- files ------------------------------------------------------------------------------------

def decode_line(line: str, where: str) -> Any:
    """json.loads one line, raising RecordError that names `where` ("file:line")."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None


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


def iter_lines(path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield ("file:line", text) for each non-blank line, lines split on "\n" only (see `jsonl_lines`)."""
    # newline="\n": no universal-newline mode, which would also end a line at a lone "\r".
    with open(path, encoding="utf-8", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{lineno}", line


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, decoded object) for each non-blank line; `where` is "file:line"."""
    for where, line in iter_lines(path):
        yield where, decode_line(line, where)


def read_pairs(path: str | Path, media_root: str | Path | None = None) -> list[PairRecord]:
    """Read and validate a pair JSONL file (media checked to exist when `media_root` is given)."""
    return [pair_from_json(obj, where, media_root) for where, obj in iter_jsonl(path)]


def read_sft(path: str | Path, media_root: str | Path | None = None) -> list[SFTRecord]:
    """Read and validate an SFT JSONL file."""
    return [sft_from_json(obj, where, media_root) for where, obj in iter_jsonl(path)]


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


def to_trl_rows(records: Iterable[PairRecord], media_root: str | Path) -> list[dict]:
    """Rows in TRL's conversational vision-preference layout: prompt / chosen / rejected / images (+ id).

    The prompt is one user message and each answer one assistant message, so TRL's DPOTrainer renders them with
    the model's own chat template and inserts one image placeholder per entry of `images` (absolute paths;
    `to_trl_dataset` decodes them). Video pairs keep their clip paths under `images` too: TRL 1.16 has no video
    collator, and that column name makes it skip its text-only preprocessing, so a custom `data_collator` can
    load the clips (benchmarks/train_vs_trl.py has one).

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
            "prompt": [{"role": "user", "content": r.prompt}],
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
