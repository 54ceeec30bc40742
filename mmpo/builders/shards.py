"""Building in N shards, each its own process, merged into exactly the files one process writes.

A builder config's `shard: "i/N"` (or, when it is empty, RANK / WORLD_SIZE from `accelerate launch` or
`torchrun`) makes the process build shard i of N into `out_dir/shards/i-of-N/`, a complete resumable build
folder of its own (pairs file, done-index, manifest.json), so a killed shard resumes alone. Once every shard
is done, `merge=true` writes `out_dir/pairs.jsonl`, the done-index and `manifest.json` in input order, the
same bytes one process writes; it refuses while a shard is unfinished, naming it.

The rule: the input is cut into blocks of `block` consecutive items (the builder's model batch: pairs per
scoring batch for difficulty, items per question batch for self_qa, 1 for augment) and block b goes to
shard b % N. Whole blocks, because a model's numbers depend on what shares its batch (bf16 padding): every
batch a shard runs is the batch one process runs. Round robin rather than contiguous ranges, because inputs
are often sorted (by source, by length) and contiguous ranges would give one shard all the long videos.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mmpo import folder_lock
from mmpo.builders.common import PAIRS_FILE, ResumableWriter, done_file, fsync_text, valid_lines
from mmpo.records import MANIFEST_FILE, file_digest

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
# Config keys that steer how a shard runs, not what it writes; shards may differ in them from each other and the merge.
RUN_ONLY_KEYS = ("out_dir", "shard", "merge", "fresh", "progress", "num_workers")


def owner(position: int, block: int, count: int) -> int:
    """The shard (0..count-1) that builds the input item at `position`: its block's number modulo `count`."""
    return (position // block) % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def folder(self, out_dir: str | Path) -> Path:
        """The shard's own build folder: `out_dir/shards/i-of-N`."""
        return Path(out_dir) / SHARDS_DIR / f"{self.index}-of-{self.count}"

    def owns(self, position: int, block: int) -> bool:
        """Whether the input item at `position` is this shard's (its block of `block` items is)."""
        return owner(position, block, self.count) == self.index


def parse_shard(text: str, environ: dict | None = None) -> Shard | None:
    """The shard this process builds, or None for the whole input.

    Args:
        text: the config's `shard`, "i/N" (0 <= i < N), or "" for none.
        environ: the environment (default os.environ); with `text` empty, RANK and WORLD_SIZE > 1 set by
            `accelerate launch` or `torchrun` make each rank one shard.

    Returns:
        The Shard, or None.
    """
    environ = os.environ if environ is None else environ
    if not text:
        world = int(environ.get("WORLD_SIZE", "1"))
        return Shard(int(environ.get("RANK", "0")), world) if world > 1 else None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ValueError(f"shard: {text!r} is not i/N with 0 <= i < N (e.g. shard=0/4)")
    if int(match[2]) > MAX_SHARDS:
        raise ValueError(f"shard: {text!r} asks for more than {MAX_SHARDS:,} shards")
    return Shard(int(match[1]), int(match[2]))


MAX_SHARDS = 100_000  # far above any cluster; a typo like 0/1000000000 is refused before anything is laid out
DIGEST_FILE = "input.sha256"  # the input file's digest, written when a build folder starts
# where the input and its media are may change between runs of a folder (the input's bytes are checked: DIGEST_FILE)
LOCATION_KEYS = ("in_sft", "in_pairs", "media_root")
SETTINGS_FILE = "settings.json"  # the build's settings (but RUN_ONLY_KEYS), written when a build folder starts


def check_count(shard: Shard, ids: Sequence[str], block: int, path: str) -> None:
    """A shard count the input can fill: at most one shard per block of `block` items (more would leave shards with
    nothing to build, and a merge walking a billion empty shards runs for minutes growing memory)."""
    blocks = max(-(-len(ids) // block), 1)
    if shard.count > blocks:
        raise ValueError(f"shard: {shard} asks for {shard.count:,} shards, but {path} has {len(ids)} items in "
                         f"{blocks} block(s) of {block}: use at most {blocks} shards")


def check_input(folder: Path, path: str, digest: str, fresh: bool) -> None:
    """Refuse to continue a build folder started from other bytes of its input (an item edited in between would
    keep its old pairs); then record this input's digest in the folder."""
    recorded = folder / DIGEST_FILE
    if recorded.is_file() and not fresh:
        before = recorded.read_text().strip()
        if before != digest:
            raise ValueError(f"{folder} was started from another version of {path} (sha256 {before}, now {digest}): "
                             "an edited item would keep its old pairs; rebuild it with fresh=true, or restore the "
                             "input")
    folder.mkdir(parents=True, exist_ok=True)
    fsync_text(recorded, digest + "\n")


def check_settings(folder: Path, config: dict, fresh: bool, free: Sequence[str] = ()) -> None:
    """Refuse to continue a build folder started with other settings (its pairs.jsonl would mix both, and its
    manifest name only the last); then record these. `free`: keys a rerun may change (difficulty's voting, redone
    over the stored raw scores)."""
    ours = _comparable(config, (*free, *LOCATION_KEYS))
    recorded = folder / SETTINGS_FILE
    if recorded.is_file() and not fresh:
        theirs = json.loads(recorded.read_text())
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if differ:
            changes = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in differ)
            raise ValueError(f"{folder} was started with other settings ({changes}): its pairs would mix both; rerun "
                             "with the settings it started with to continue it, or rebuild with fresh=true (or use "
                             "another out_dir)")
    fsync_text(recorded, json.dumps(ours, indent=1, sort_keys=True) + "\n")


def check_unique(ids: Sequence[str], path: str) -> None:
    """Sharded builds find each input's results by its id, so an id that repeats is an error naming both lines."""
    first: dict[str, int] = {}
    for line, item_id in enumerate(ids, 1):
        if item_id in first:
            raise ValueError(f"{path}: id {item_id!r} on lines {first[item_id]} and {line}: sharded builds need "
                             "unique input ids (they find each item's results by its id)")
        first[item_id] = line


def plan(cfg: Any, ids: Sequence[str], path: str, block: int,
         free: Sequence[str] = ()) -> tuple[Shard | None, Path, list[int]]:
    """What this process builds: (its shard or None, its output folder, the input positions it owns).

    Args:
        cfg: builder config (`shard`, `merge`, `out_dir`).
        ids: input item ids, in input order.
        path: the input file (named in errors).
        block: items per block (see the module docstring).
        free: settings a rerun of the folder may change (`check_settings`).

    Returns:
        (shard, folder, positions): None, out_dir and every position for a whole build.
    """
    shard = parse_shard(cfg.shard)
    folder = Path(cfg.out_dir) if shard is None else shard.folder(cfg.out_dir)
    if shard is not None:
        check_count(shard, ids, block, path)
        check_unique(ids, path)
    with folder_lock.locked(folder):  # checked and recorded by one process at a time
        check_input(folder, path, file_digest(path), getattr(cfg, "fresh", False))
        check_settings(folder, dataclasses.asdict(cfg), getattr(cfg, "fresh", False), free)
    if shard is None:
        return None, folder, list(range(len(ids)))
    return shard, folder, [p for p in range(len(ids)) if shard.owns(p, block)]


def use_rank_gpu() -> None:
    """Under a launcher, "cuda" and "auto" mean this rank's GPU (LOCAL_RANK), not every rank on GPU 0."""
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(local))


def _comparable(config: dict, merge_only: Sequence[str]) -> dict:
    """A config as JSON values, without the keys that only steer a run or only the merge."""
    plain = json.loads(json.dumps(config, default=str))
    return {k: v for k, v in plain.items() if k not in RUN_ONLY_KEYS and k not in merge_only}


def found_shards(out_dir: Path, most: int = MAX_SHARDS) -> list[Shard]:
    """The shards of `out_dir` (all i of one N, started or not), from the `shards/i-of-N` folders there; an N above
    `most` is refused before any list of them is made."""
    counts = sorted({int(m[2]) for d in (out_dir / SHARDS_DIR).glob("*-of-*")
                     if (m := re.fullmatch(r"(\d+)-of-(\d+)", d.name))})
    if not counts:
        raise ValueError(f"merge: no shards in {out_dir / SHARDS_DIR} (build them first with shard=i/N)")
    if len(counts) > 1:
        raise ValueError(f"merge: {out_dir / SHARDS_DIR} holds shards of {counts} processes; remove the folders of "
                         "the count you no longer use")
    if counts[0] > most:
        raise ValueError(f"merge: {out_dir / SHARDS_DIR} holds shards of {counts[0]:,} processes, but the input fills "
                         f"at most {most}: remove those folders")
    return [Shard(i, counts[0]) for i in range(counts[0])]


def _unfinished(shard: Shard, writer: ResumableWriter, ids: Sequence[str], block: int, config: dict,
                merge_only: Sequence[str], path: str, digest: str) -> str:
    """Why `shard` cannot be merged yet ("" when it can)."""
    manifest = writer.out_dir / MANIFEST_FILE
    recorded = writer.out_dir / DIGEST_FILE
    if recorded.is_file() and recorded.read_text().strip() != digest:
        return (f"shard {shard} was built from another version of {path} (sha256 {recorded.read_text().strip()}, "
                f"now {digest}); rebuild it with shard={shard} fresh=true")
    mine = [ids[p] for p in range(len(ids)) if shard.owns(p, block)]
    left = sum(not writer.is_done(i) for i in mine)
    if left or not manifest.is_file():
        return f"shard {shard} is unfinished ({left} of {len(mine)} items left); rerun it with shard={shard}"
    theirs = _comparable(json.loads(manifest.read_text())["config"], merge_only)
    ours = _comparable(config, merge_only)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        return f"shard {shard} was built with other settings ({', '.join(differ)}); rebuild it with fresh=true"
    return ""


def merge(cfg: Any, ids: Sequence[str], path: str, block: int, pairs_file: str = PAIRS_FILE,
          merge_only: Sequence[str] = ()) -> ResumableWriter:
    """Write `out_dir/<pairs_file>` and its done-index from the finished shards, in input order.

    Walking the input in order and taking each item's records from the shard that built it gives the lines
    in the order one process appends them, with the bytes the shard wrote; a record id met again (two items
    made the same pair) is kept once, the first time, as `ResumableWriter.commit` does. The shards' record
    lines are held in memory meanwhile (about the size of the set).

    Args:
        cfg: the builder config the shards ran with (`out_dir`; `shard` empty).
        ids: input item ids, in input order.
        path: the input file (named in errors).
        block: items per block, as the shards used.
        pairs_file: the shards' record file (difficulty: raw scores).
        merge_only: config keys only the merge uses (difficulty's voting), which the shards may have had otherwise.

    Returns:
        A ResumableWriter over the merged folder (every item done), for the builder's own `finish`.

    Raises:
        ValueError: a shard is missing, unfinished or built with other settings (each one named).
    """
    if cfg.shard:
        raise ValueError("merge=true gathers every shard: leave shard empty")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("merge=true runs in one process, not under a multi-process launcher")
    check_unique(ids, path)
    out_dir = Path(cfg.out_dir)
    config = dataclasses.asdict(cfg)
    shards = found_shards(out_dir, most=max(-(-len(ids) // block), 1))
    digest = file_digest(path)
    writers, problems = {}, []
    for shard in shards:
        if not shard.folder(out_dir).is_dir():
            problems.append(f"shard {shard} has not run; run it with shard={shard}")
            continue
        writers[shard.index] = ResumableWriter(shard.folder(out_dir), pairs_file)
        problems.append(_unfinished(shard, writers[shard.index], ids, block, config, merge_only, path, digest))
    try:
        if any(problems):
            raise ValueError("cannot merge yet: " + "; ".join(p for p in problems if p))
        lines = {i: {json.loads(x)["id"]: x for x in valid_lines(w.pairs_path)} for i, w in writers.items()}
    finally:  # the shards were only read: free their folders (a shard may be rerun next)
        for w in writers.values():
            folder_lock.release(w.out_dir)
    records, rows, seen = [], [], set()
    for position, item_id in enumerate(ids):
        shard = owner(position, block, len(shards))
        row = writers[shard].done[item_id]
        rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        for rid in row.get("records", []):
            if rid not in seen:
                seen.add(rid)
                records.append(lines[shard][rid] + "\n")
    fsync_text(out_dir / pairs_file, "".join(records))
    fsync_text(out_dir / done_file(pairs_file), "".join(rows))
    fsync_text(out_dir / DIGEST_FILE, digest + "\n")
    log.info("merged %d shards into %s", len(shards), out_dir / pairs_file)
    return ResumableWriter(out_dir, pairs_file)


def shard_manifest(shard: Shard | None) -> dict:
    """Extra manifest keys of a finished shard's folder ({"shard": "i/N"}; none for a whole build), and the log
    line that says what to run next."""
    if shard is None:
        return {}
    log.info("shard %s done; once all %d are, `mmpo build ... merge=true` (same config) writes the set",
             shard, shard.count)
    return {"shard": str(shard)}
