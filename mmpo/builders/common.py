"""Shared machinery of the builders: a resumable append-only writer with a done-index, the item loop
(parallel preparation, per-item skip of bad inputs, tqdm progress) and small path helpers.

Resume protocol (docs/ARCHITECTURE.md, "mmpo.builders"): for each input item the builder first appends
its pairs to `pairs.jsonl` (fsynced, `mmpo.records.write_jsonl(append=True)`), then appends one JSON
line `{"id", "counts", "records", "skipped"?}` to `done.txt` (fsynced; `records`: the ids of the item's
pairs, which let `mmpo.builders.shards.merge` put shards' pairs back in input order). A killed build
restarts, skips the ids in `done.txt`, and drops pairs whose id is already in `pairs.jsonl`, so a crash
between the two writes never duplicates a pair; a half-written last line (killed mid-write) is cut off on
restart. Per-item counters and skip reasons live in `done.txt` too, so the manifest of a resumed build
equals the manifest of an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mmpo import folder_lock
from mmpo.records import PairRecord, write_jsonl, write_manifest

PAIRS_FILE = "pairs.jsonl"
DONE_FILE = "done.txt"


class BadInput(ValueError):
    """An input item that cannot be used (bad media, unusable content); skipped, counted, never fatal."""


def done_file(pairs_file: str) -> str:
    """The done-index's file name for a record file (`done.txt` for pairs.jsonl, `<name>.done.txt` otherwise)."""
    return DONE_FILE if pairs_file == PAIRS_FILE else f"{pairs_file}.done.txt"


def valid_lines(path: Path) -> list[str]:
    """Complete lines of an append-only JSONL file; a torn last line (killed mid-write) is cut off, and the file
    rewritten atomically without it.

    Split on b"\n" and counted in bytes: `str.splitlines` would also split on U+2028 / U+0085, which records
    hold raw (`jsonl_lines`), and so cut a good line and drop the rest of the file.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines, good = [], 0  # good: the bytes up to the end of the last whole line
    for raw in data.split(b"\n")[:-1]:  # what follows the last newline is a partial write
        if raw.strip():
            try:
                json.loads(raw)
            except ValueError:  # not JSON, or not UTF-8: only possible for a line torn by a crash; stop there
                break
            lines.append(raw.decode("utf-8"))
        good += len(raw) + 1
    if good != len(data):
        fsync_text(path, data[:good].decode("utf-8"))
    return lines


class ResumableWriter:
    """Append-only `pairs.jsonl` plus the `done.txt` index of processed input ids.

    Args:
        out_dir: the build's output folder (created).
        pairs_file: file name of the record stream (difficulty keeps raw scores in a side file).
        fresh: delete earlier outputs instead of resuming.
    """

    def __init__(self, out_dir: str | Path, pairs_file: str = PAIRS_FILE, fresh: bool = False):
        self.out_dir = Path(out_dir)
        folder_lock.acquire(self.out_dir)  # one build per folder: a second is refused, naming this one
        self.pairs_path = self.out_dir / pairs_file
        self.done_path = self.out_dir / done_file(pairs_file)
        if fresh:
            for p in (self.pairs_path, self.done_path):
                p.unlink(missing_ok=True)
        self.pairs_path.touch()  # an empty set is still a valid (empty) pair file
        self.pair_ids = {json.loads(x)["id"] for x in valid_lines(self.pairs_path)}
        self.done = {}
        for raw in valid_lines(self.done_path):
            row = json.loads(raw)
            self.done[row["id"]] = row

    def is_done(self, item_id: str) -> bool:
        """Whether `item_id` was fully processed by this or an earlier run."""
        return item_id in self.done

    def commit(self, item_id: str, records: Iterable[Any], counts: dict | None = None,
               skipped: str | None = None) -> int:
        """Append an item's records (pairs first), then mark the item done.

        Args:
            item_id: the input item's id.
            records: PairRecords (or dicts with an "id") produced from it.
            counts: per-item counters summed into the manifest.
            skipped: reason, when the item was skipped.

        Returns:
            Number of records actually appended (already-written ids are dropped).
        """
        new, ids = [], []
        for r in records:
            rid = r.id if isinstance(r, PairRecord) else r["id"]
            ids.append(rid)
            if rid not in self.pair_ids:
                self.pair_ids.add(rid)
                new.append(r)
        if new:
            write_jsonl(self.pairs_path, new, append=True)
        row = {"id": item_id, "counts": dict(counts or {}), "records": ids}
        if skipped is not None:
            row["skipped"] = skipped
        write_jsonl(self.done_path, [row], append=True)  # fsynced after the pairs: see module docstring
        self.done[item_id] = row
        return len(new)

    def totals(self, ids: Iterable[str]) -> tuple[dict, list[dict]]:
        """Counters summed over the done items among `ids`, and the skipped ones with their reasons, in the
        order of `ids` (input order: the same list whatever order a build, resumed or sharded, did them in)."""
        counts: Counter = Counter()
        skipped = []
        rows = [self.done[i] for i in dict.fromkeys(ids) if i in self.done]
        for row in rows:
            counts.update(row.get("counts", {}))
            if "skipped" in row:
                skipped.append({"id": row["id"], "reason": row["skipped"]})
        counts["inputs_done"] = len(rows)
        counts["skipped"] = len(skipped)
        return dict(counts), skipped


def prepared_items(items: list, prepare: Callable[[Any], Any], num_workers: int = 0) -> Iterator[tuple[Any, Any]]:
    """Yield `(item, prepare(item))` in input order, preparing in `num_workers` processes.

    `prepare` must be picklable (a module-level function or a functools.partial of one) and should
    return errors as values rather than raise, so one bad item never stops the pool. At most
    `LOOKAHEAD * num_workers` items are prepared ahead of the one yielded, so prepared pixels never pile up
    in memory while the caller writes. A worker that dies (killed for memory, a decoder's crash) stops the
    build with an error naming the item; a `multiprocessing.Pool` would wait for that item's result forever.
    """
    if num_workers <= 0:
        for item in items:
            yield item, prepare(item)
        return
    # fork: workers inherit imported modules (decord, numpy) instead of re-importing them (seconds each)
    pool = ProcessPoolExecutor(num_workers, mp_context=get_context("fork"))
    try:
        ahead = LOOKAHEAD * num_workers
        futures = collections.deque(pool.submit(prepare, item) for item in items[:ahead])
        for n, item in enumerate(items):
            try:
                result = futures.popleft().result()
            except BrokenProcessPool:
                raise RuntimeError(
                    f"a worker process died while preparing item {getattr(item, 'id', item)!r} or one beside it "
                    "(killed for memory, or a crash in a decoder); the items done so far are kept: rerun with "
                    "num_workers=0 to continue and see which item it is") from None
            if n + ahead < len(items):
                futures.append(pool.submit(prepare, items[n + ahead]))
            yield item, result
    finally:  # an error in the caller's loop stops the workers instead of preparing every item left
        pool.shutdown(wait=True, cancel_futures=True)


LOOKAHEAD = 4  # items in flight per worker: enough to keep every worker busy, few enough to bound memory


def progress(iterable: Iterable, total: int, enabled: bool, desc: str, unit: str = "item") -> Iterable:
    """A tqdm bar when `enabled` and stderr is a terminal; piped (a log file), a line about every 5% instead (a
    bar's redraws would each become a line); not `enabled`, the iterable itself."""
    if not enabled:
        return iterable
    if not _on_terminal():
        return _progress_lines(iterable, total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit)


def _on_terminal() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _progress_lines(iterable: Iterable, total: int, desc: str, unit: str) -> Iterator:
    """"augment: 50/1000 items (5%)" log lines, about every 5% of `total` and at the end."""
    import logging

    log = logging.getLogger("mmpo.builders")
    every = max(1, total // 20)
    n = 0
    for n, item in enumerate(iterable, 1):
        yield item
        if n % every == 0 or n == total:
            log.info("%s: %d/%d %ss (%d%%)", desc, n, total, unit, 100 * n // max(total, 1))


def finish(writer: ResumableWriter, cfg: Any, ids: list[str], media_root: Path, **extra: Any) -> Path:
    """Write `manifest.json` (counts per kind, skipped items, config, seed, media root) and return the output folder.

    Args:
        writer: the build's writer.
        cfg: builder config (recorded).
        ids: the ids of the input items this build covers, in input order (a shard: its own).
        media_root: recorded so `mmpo train` finds the set's media with no `data.media_root`.
        **extra: more top-level manifest keys.
    """
    counts, skipped = writer.totals(ids)
    counts["inputs"] = len(ids)
    counts["pairs"] = len(writer.pair_ids)
    write_manifest(writer.out_dir, counts, dataclasses.asdict(cfg), getattr(cfg, "seed", 0), skipped,
                   media_root=media_root, **extra)
    folder_lock.release(writer.out_dir)  # the build is complete: the folder is free again
    return writer.out_dir


def fsync_text(path: Path, text: str) -> None:
    """Write a whole file atomically (tmp + rename), for outputs produced in one go."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
