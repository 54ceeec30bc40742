"""`RecordFile`: the validated records of a JSONL file as a lazy, picklable `Sequence` (two integers a record;
parsed again from disk on `[i]`), and the repeated-id check on 8-byte id hashes.
"""

from __future__ import annotations

import hashlib
import operator
import os
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmpo.records.jsonl import decode_bytes, decode_line
from mmpo.records.media_paths import MediaCheck
from mmpo.records.schema import RecordError
from mmpo.records.validation import PARSERS


def file_stamp(path: str | Path) -> tuple[int, int]:
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
        digest: sha256 of the file's bytes (16 hex digits, as `mmpo.records.file_digest`), computed
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
        return PARSERS[self.kind](decode_line(decode_bytes(f.readline(), where), where), where, self._check)

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


def id_hash(rid: str) -> int:
    """8 bytes standing for an id in the uniqueness check (far less memory than the id strings)."""
    return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")


def repeated_ids(records: RecordFile, id_hashes: array) -> list[tuple[int, int, str]]:
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
