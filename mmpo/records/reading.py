"""Reading record files: `scan_records` validates a file in one streaming pass (or, for big pair files, in a
background process while training starts) and returns a lazy `RecordFile`; `read_pairs` / `read_sft` read a whole
small file into a list.

These read mmpo's own JSONL only. Sets in other layouts (LLaVA conversation JSON, LLaMA-Factory, parquet snapshots)
are read by `mmpo.formats` (`read_set`, `convert`), which builds on this package, never the other way round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from pathlib import Path

from mmpo.records.jsonl import decode_bytes, decode_line, index_lines, iter_raw_lines
from mmpo.records.media_paths import media_check
from mmpo.records.record_file import RecordFile, file_stamp, id_hash, repeated_ids
from mmpo.records.schema import PairRecord, RecordError, SFTRecord, field_error, short_repr
from mmpo.records.validation import PARSERS

log = logging.getLogger(__name__)


BACKGROUND_MIN_BYTES = 32 << 20  # pair files from this size are validated in the background in error mode


def _skip_or_raise(exc: RecordError, on_bad: str, skipped: list[str]) -> None:
    """Raise `exc`, or (on_bad "skip") log it once and count it in `skipped`."""
    if on_bad != "skip":
        raise exc
    skipped.append(str(exc))
    log.warning("skipping %s", exc)


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

    stamp = file_stamp(path)
    offsets, linenos, digest = index_lines(path)
    records = RecordFile(path, kind, offsets, linenos, digest, stamp)
    records._verdict = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                   else None).Array("c", 4096, lock=False)
    records._media_root = None if media_root is None else str(media_root)
    parse, check = PARSERS[kind], media_check(media_root)
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
                    id_hashes.append(id_hash(rec.id))
            if len(id_hashes if kind == "pair" else records) != len(records):
                raise RecordError(f"{path}: {len(id_hashes)} records validated but {len(records)} lines indexed "
                                  "(a line of Unicode spaces only?)")
            if kind == "pair":
                own = RecordFile(path, kind, offsets, linenos, digest, stamp)  # its own file handle
                for later, first, rid in repeated_ids(own, id_hashes)[:1]:
                    raise field_error(own.where(later), "id", f"{short_repr(rid)} is already the id of {own.where(first)}; "
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
    parse, check = PARSERS[kind], media_check(media_root)
    hasher, offsets, linenos, id_hashes = hashlib.sha256(), array("q"), array("q"), array("Q")
    skipped: list[str] = []
    first_of_type: dict[str, str] = {}  # media type -> where its first record is
    stamp = file_stamp(path)
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
            id_hashes.append(id_hash(rec.id))
    records = RecordFile(path, kind, offsets, linenos, hasher.hexdigest()[:16], stamp)
    records.media_types = first_of_type
    if kind == "pair":
        repeats = repeated_ids(records, id_hashes)
        for later, first, rid in repeats:
            _skip_or_raise(field_error(records.where(later), "id", f"{short_repr(rid)} is already the id of "
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
    if not is_own_jsonl(path):
        raise RecordError(f"{path}: not an mmpo record file (JSONL with media and media_type); a set in another "
                          "layout is read by mmpo.formats.read_set, or converted by `mmpo data convert`")
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
    """Read and validate a whole SFT file into memory (see `read_pairs`; SFT ids may repeat)."""
    return _read_all(path, "sft", media_root)
