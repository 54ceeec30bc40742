"""JSONL files, line by line: bytes that are not UTF-8 and invalid JSON are RecordErrors naming file:line; a
byte-order mark opening a file is dropped; `index_lines` finds every line's offset without parsing; `write_jsonl`
writes records (fsynced, so a killed builder loses at most one line).
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mmpo.records.schema import RecordError

BOM = b"\xef\xbb\xbf"


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
            if lineno == 1 and raw.startswith(BOM):
                raw, start = raw[len(BOM):], start + len(BOM)
            yield lineno, start, raw


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
            if f.read(len(BOM)) == BOM:  # a byte-order mark is not part of the first record
                offsets[0] = len(BOM)
    return offsets, linenos, hasher.hexdigest()[:16]


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
