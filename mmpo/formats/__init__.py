"""Preference and SFT sets in the layouts users already have: read (`convert`, `SourceRecords`) and written.

`FORMATS` maps a format name to its `Format` (reader, detection rule); `detect` picks one from a table's
columns. `convert` streams a source into mmpo's `pairs.jsonl` / `sft.jsonl` + `manifest.json`; `SourceRecords`
lets `mmpo train` read a source directly (`data.train: {format, path}`), converting each row when a batch
needs it. Rows that cannot be mapped are counted by reason and named (`file row N: reason: detail`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmpo.formats import hub, llamafactory, llava, own, swift, trl
from mmpo.formats.base import Format
from mmpo.formats.mapping import MEDIA_DIR, DryMedia, MediaStore, Unmappable, media_value
from mmpo.formats.tables import Table, is_bad_line, open_table
from mmpo.records import (
    MediaCheck,
    RecordError,
    file_digest,
    id_hash,
    is_own_jsonl,
    make_id,
    pair_from_json,
    read_pairs,
    read_sft,
    sft_from_json,
    write_jsonl,
    write_manifest,
)

FORMATS: dict[str, Format] = {f.name: f for m in (own, hub, trl, llamafactory, swift, llava) for f in m.FORMATS}
# detection tries the most specific column sets first (TRL's prompt/chosen/rejected is also in others)
DETECT_ORDER = ("mmpo", "rlaif_v", "rlhf_v", "vlfeedback", "swift", "llamafactory_v1", "povid", "hadpo",
                "llamafactory", "mdpo", "llava_video_dpo", "trl", "llava", "llamafactory_sft")
OUT_FILES = {"pair": "pairs.jsonl", "sft": "sft.jsonl"}
log = logging.getLogger(__name__)


class FormatError(ValueError):
    """A source whose format cannot be told or is not known."""


def detect(table: Table, src: str | Path = "", kind: str | None = None) -> str:
    """The format of `table`, from its columns (and the first row's value types), or FormatError listing them."""
    cols = set(table.columns)
    first = table.row(0) if len(table) else {}
    first = first if isinstance(first, dict) else {}
    for name in DETECT_ORDER:
        if (kind is None or FORMATS[name].kind == kind) and FORMATS[name].detect(cols, first):
            return name
    wanted = [n for n in FORMATS if kind is None or FORMATS[n].kind == kind]
    raise FormatError(f"{src}: cannot tell the format from the columns found {sorted(cols)}; name it "
                      f"(--from / data.train.format), one of {wanted}")


@dataclass
class Source:
    """A table bound to its format: what the readers below share."""

    path: Path
    format: Format
    table: Table
    options: dict
    source_dir: Path  # the folder path references in the rows are relative to

    def records_of(self, i: int, row: Any, sink) -> list[dict]:
        """Record fields of row `i` (JSON-ready, id included), or Unmappable."""
        problem = is_bad_line(row)
        if problem:
            raise Unmappable("bad_json", problem)
        out = self.format.read_row(row, sink, self.options)
        out = out if isinstance(out, list) else [out]
        # the row's place, relative to the source (the same wherever the source folder is moved to)
        place = self.table.where(i).removeprefix(str(self.path if self.path.is_dir() else self.path.parent))
        for k, fields in enumerate(out):
            if "id" not in fields:  # from the row's place and text, not its media paths (bytes are read later)
                texts = [fields.get(key) for key in ("prompt", "chosen", "rejected", "answer")]
                fields["id"] = make_id(self.format.name, place, k, *texts)
            fields.setdefault("source", f"convert:{self.format.name}")
        return out

    def to_record(self, fields: dict, where: str):
        """The validated mmpo record of `fields`, as `records_of` gives them (RecordError naming `where` if it is not
        one)."""
        if self.format.kind == "pair":
            return pair_from_json(fields, where)
        fields = {k: v for k, v in fields.items() if k != "source"}
        return sft_from_json(fields, where)


def open_source(src: str | Path, fmt: str = "auto", kind: str | None = None, media_root: str | Path | None = None
                ) -> Source:
    """The source at `src` (a snapshot folder or a file) read as format `fmt` ("auto": detected)."""
    src = Path(src)
    table = open_table(src)
    name = detect(table, src, kind) if fmt == "auto" else fmt
    if name not in FORMATS:
        raise FormatError(f"unknown format {name!r}; known: {sorted(FORMATS)}")
    f = FORMATS[name]
    if kind is not None and f.kind != kind:
        raise FormatError(f"{src}: format {name!r} holds {f.kind} records, {kind} records are needed here")
    options = f.options(src, table) if f.options else {}
    source_dir = Path(media_root) if media_root else (src if src.is_dir() else src.parent)
    return Source(src, f, table, options, source_dir.resolve())


def _skip(where: str, exc: Exception, on_bad: str, skips: Counter, named: list) -> None:
    reason = getattr(exc, "reason", "invalid_record")
    if on_bad == "error":
        raise RecordError(f"{where}: {exc}") from None
    skips[reason] += 1
    named.append(f"{where}: {exc}")


def _repeats(id_hashes: array) -> list[tuple[int, int]]:
    """(later, first) positions of records whose id hash an earlier record has (8-byte blake2b of the id, as
    `mmpo.records` keeps: a 64-bit collision among a million ids has odds of about 3e-8)."""
    import numpy as np

    hashes = np.frombuffer(id_hashes, dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    out, first_of = [], {}
    for k in np.flatnonzero(ranked[1:] == ranked[:-1]):
        first = first_of.setdefault(int(ranked[k]), int(order[k]))
        out.append((int(order[k + 1]), first))
    return sorted(out)


def convert(src: str | Path, out_dir: str | Path, fmt: str = "auto", on_bad: str = "skip", kind: str | None = None,
            media_root: str | Path | None = None) -> Path:
    """Stream `src` into `out_dir/pairs.jsonl` (or `sft.jsonl`) + `manifest.json`; returns the record file.

    Media bytes go to `out_dir/media/<sha256[:2]>/<sha256>.<ext>` (identical images stored once); path
    references are read in place through the `out_dir/source` link. The manifest records the source, the
    format, counts, skips by reason with every skipped row named, and sha256 of the source files and the output.

    Args:
        src: a snapshot folder (parquet / arrow / json / jsonl files) or one data file.
        out_dir: the set's folder.
        fmt: a key of FORMATS, or "auto".
        on_bad: "skip" (count and name the row) or "error" (RecordError naming the row).
        kind: "pair" / "sft" to insist on one (None: the format's).
        media_root: the folder path references are relative to (default: the source's folder).
    """
    source = open_source(src, fmt, kind, media_root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = MediaStore(out_dir, source.source_dir)
    skips, named, counts = Counter(), [], Counter(rows=0, records=0)
    id_hashes, rows_of = array("Q"), array("q")  # 16 bytes a record, for the repeated-id check at the end

    def records() -> Iterator:
        for i, row in enumerate(source.table.iter_rows()):
            where = source.table.where(i)
            counts["rows"] += 1
            try:
                recs = [source.to_record(fields, where) for fields in source.records_of(i, row, store)]
            except (Unmappable, RecordError) as exc:
                _skip(where, exc, on_bad, skips, named)
                continue
            for rec in recs:
                id_hashes.append(id_hash(rec.id))
                rows_of.append(i)
                counts["records"] += 1
                yield rec

    out_file = out_dir / OUT_FILES[source.format.kind]
    write_jsonl(out_file, records())
    repeats = _repeats(id_hashes)
    if repeats:  # rare: write the file again without the later records (the first of each id stays)
        for later, first in repeats:
            _skip(source.table.where(rows_of[later]), Unmappable(
                "duplicate_id", f"the id of {source.table.where(rows_of[first])} again"), on_bad, skips, named)
        drop = {later for later, _ in repeats}
        tmp = out_file.with_suffix(".tmp")
        with open(out_file, encoding="utf-8") as src_f, open(tmp, "w", encoding="utf-8") as dst:
            dst.writelines(line for k, line in enumerate(src_f) if k not in drop)
        tmp.replace(out_file)
        counts["records"] -= len(drop)
    hashes = {"output": {out_file.name: file_digest(out_file, 64)},
              "source": {os.path.relpath(f, source.path if source.path.is_dir() else source.path.parent): file_digest(f, 64)
                         for f in source.table.files}}
    write_manifest(out_dir, counts={**counts, "skipped": sum(skips.values()), "media_files_written": store.written},
                   config={"format": source.format.name, "source": str(Path(src).resolve()), "on_bad": on_bad},
                   seed=0, skipped=named, media_root=out_dir, source=str(Path(src).resolve()),
                   format=source.format.name, skipped_by_reason=dict(skips), content_hashes=hashes)
    return out_file


class SourceRecords:
    """A source read as training records, converted row by row when a batch needs it (`data.train: {format, path}`).

    Built by one validation pass that maps every row's text without reading embedded media bytes (parquet
    image columns are read as their `path` field only), so bad rows stop the run or are counted before step 1
    and the first step waits for no conversion. A record's media are written to `root/media/` (content-
    addressed, atomically, so DataLoader workers can share the folder) the first time it is read; a row whose
    bytes turn out to be unusable gets a missing media path, which the collator reports as `bad_media`.
    The same interface as `mmpo.records.RecordFile`: len, indexing, `where`, `digest`, `media_types`.
    """

    def __init__(self, source: Source, root: str | Path, kind: str, on_bad: str = "error"):
        self.source, self.root, self.kind = source, Path(root), kind
        self.path = str(source.path)
        self.rows, self.subs = array("q"), array("i")
        self.skipped: list[str] = []
        self.media_types: dict[str, str] = {}
        if source.format.kind != kind:
            raise FormatError(f"{source.path}: format {source.format.name!r} holds {source.format.kind} records; "
                              f"this stage trains on {kind} records")
        dry, skips, digest, id_hashes = DryMedia(source.source_dir), Counter(), hashlib.sha256(), array("Q")
        digest.update(source.format.name.encode())
        columns = source.table.light_columns(source.format.heavy)
        for i, row in enumerate(source.table.iter_rows(columns)):
            where = source.table.where(i)
            try:
                recs = [source.to_record(fields, where) for fields in source.records_of(i, row, dry)]
            except (Unmappable, RecordError) as exc:
                _skip(where, exc, on_bad, skips, self.skipped)
                continue
            for k, rec in enumerate(recs):
                digest.update(json.dumps(rec.to_json(), sort_keys=True).encode())
                id_hashes.append(id_hash(rec.id))
                self.rows.append(i)
                self.subs.append(k)
                self.media_types.setdefault(rec.media_type, where)
        repeats = _repeats(id_hashes)
        for later, first in repeats:  # before step 1: stop naming both rows, or leave the later one out (counted)
            _skip(source.table.where(self.rows[later]), Unmappable(
                "duplicate_id", f"the id of {source.table.where(self.rows[first])} again"), on_bad, skips, self.skipped)
        if repeats:
            drop = {later for later, _ in repeats}
            keep = [j for j in range(len(self.rows)) if j not in drop]
            self.rows, self.subs = array("q", (self.rows[j] for j in keep)), array("i", (self.subs[j] for j in keep))
        self.skips_by_reason = dict(skips)
        self.digest = digest.hexdigest()[:16]
        self._store = None

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int) -> str:
        return self.source.table.where(self.rows[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range ({len(self)} records)")
        if self._store is None:
            self._store = MediaStore(self.root, self.source.source_dir)
        ri, where = self.rows[i], self.where(i)
        try:
            fields = self.source.records_of(ri, self.source.table.row(ri), self._store)[self.subs[i]]
        except Unmappable as exc:  # the bytes the validation pass did not read: the collator names it bad_media
            dry = self.source.records_of(ri, self.source.table.row(ri), _Unreadable(str(exc)))[self.subs[i]]
            return self.source.to_record(dry, f"{where} ({exc})")
        return self.source.to_record(fields, where)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"SourceRecords({self.path!r}, {self.source.format.name}, {len(self)} {self.kind} records)"


class _Unreadable:
    """A sink naming a media path that does not exist, so the usual bad-media handling meets the row."""

    def __init__(self, why: str):
        self.why = why

    def put(self, value) -> str:
        return f"{MEDIA_DIR}/unreadable/{hashlib.sha256(self.why.encode()).hexdigest()[:16]}"


def read_source_records(spec_format: str, path: str | Path, root: str | Path, kind: str, on_bad: str,
                        media_root: str | Path | None = None) -> tuple[SourceRecords, list[str]]:
    """`(records, skipped)` for training on a source directly, like `mmpo.batches.read_records`."""
    records = SourceRecords(open_source(path, spec_format, None, media_root), root, kind, on_bad)
    return records, records.skipped


class _InPlace:
    """The builders' sink: a path reference is kept as written (relative to their media root), checked to exist
    when a root is given; embedded bytes need a conversion first."""

    def __init__(self, media_root):
        self.check = MediaCheck(media_root) if media_root else None

    def put(self, value) -> str:
        data, path = media_value(value)
        if data or not path:
            raise Unmappable("embedded_media", "media stored in the rows: run `mmpo data convert` first")
        problem = self.check.problem(path) if self.check else ""
        if problem:
            raise Unmappable("missing_media", problem)
        return os.path.normpath(path)


def read_in_place(path: str | Path, kind: str, media_root: str | Path | None = None) -> list:
    """Every record of a set in another layout, media paths as written (what `read_set` gives the builders for LLaVA
    conversation JSON and friends). Unmappable rows are logged once each and counted."""
    source = open_source(path, "auto", kind)
    sink, out, skips, named = _InPlace(media_root), [], Counter(), []
    for i, row in enumerate(source.table.iter_rows()):
        where = source.table.where(i)
        try:
            out += [source.to_record(fields, where) for fields in source.records_of(i, row, sink)]
        except (Unmappable, RecordError) as exc:
            _skip(where, exc, "skip", skips, named)
            log.warning("skipping %s: %s", where, exc)
    if skips:
        log.warning("%s (%s): %d records, %d rows skipped %s", path, source.format.name, len(out), sum(skips.values()),
                    dict(skips))
    return out


def read_set(path: str | Path, kind: str, media_root: str | Path | None = None, key: str = "input") -> list:
    """Every record of a (small) set in memory, whatever its layout: the builders' inputs.

    mmpo's own JSONL is read as `mmpo.records.read_pairs` / `read_sft` read it (media checked under `media_root`
    when given); a set in another layout (LLaVA conversation JSON such as llava_v1_5_mix665k.json, LLaVA-Video-178K /
    ShareGPT4Video, LLaMA-Factory `messages` + images, a pair set such as POVID) through `read_in_place`, media paths
    as written (relative to the media root): one SFT sample per answer; rows that are no records are logged, named
    and counted. A missing file is an error naming `key` (the config key that gave the path).
    """
    if not Path(path).exists():  # a file, or a dataset folder (parquet shards)
        raise FileNotFoundError(f"{key}: no such file or folder {str(path)!r}")
    if not is_own_jsonl(path):
        return read_in_place(path, kind, media_root)
    return (read_pairs if kind == "pair" else read_sft)(path, media_root)
