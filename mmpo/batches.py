"""From records to model tensors: reading training files and collating pairs / SFT samples into typed batches.

A collated batch is a frozen dataclass (`PairBatch`, `SFTBatch`), the trainer's only input format; each
field's comment gives its shape. What a loss needs beyond the pair itself (corrupted media, PaMi bags,
the ground-truth answer, the score gap) is collated only when a loss `requires` it, by that requirement's own
piece (`mmpo.requirements`), into `PairBatch.extra`; a record that lacks what a loss requires is an error
naming the record, never a silent default.

Worked example: two image pairs, loss dpo (requires {"reference"}) ->
    ids ["a1", "b2"], prompt["input_ids"] [2, Lp] (16 image tokens each), chosen["input_ids"] [2, Lc],
    rejected["input_ids"] [2, Lr], weight tensor([1., 1.]), extra {} (nothing beyond the pair).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmpo.lengths import check_record_media, too_long_message
from mmpo.media import MediaError, load_media
from mmpo.models import encode_answers, encode_prompts
from mmpo.records import PairRecord, RecordFile, SFTRecord, scan_records
from mmpo.requirements import Collating, needed

log = logging.getLogger(__name__)


def read_records(path: str | Path, media_root: str | Path, kind: str, on_bad: str) -> tuple[RecordFile, list]:
    """Read a pair ("pair") or SFT ("sft") JSONL; bad lines raise, or are skipped and returned.

    Every line is validated before this returns (one streaming pass), but the records are not kept in memory:
    the result is a lazy sequence that parses a record again when a batch needs it (`mmpo.records.scan_records`).

    Args:
        path: the JSONL file.
        media_root: folder media paths are relative to (media existence is checked).
        kind: "pair" or "sft".
        on_bad: "error" (raise RecordError naming file:line:field) or "skip" (each skip logged once).

    Returns:
        (records, skipped): records supports len(), indexing and slicing and carries the file's `digest`;
        skipped is a list of "file:line: reason" strings.
    """
    return scan_records(path, kind, media_root, on_bad)


@dataclass(frozen=True)
class PairBatch:
    """One micro-batch of B preference pairs (B = 0: every record was left out, see `skipped`)."""

    ids: list[str]  # B record ids
    prompt: dict  # encode_prompts: input_ids / attention_mask [B, Lp], LEFT-padded, + media tensors
    chosen: dict  # encode_answers: input_ids / attention_mask [B, Lc], RIGHT-padded, EOS appended
    rejected: dict  # the same for the rejected answers, [B, Lr]
    weight: torch.Tensor  # [B] per-pair loss weight (1.0 where the record sets none)
    skipped: list  # (id, kind, message) of records left out of this batch; kind "too_long" | "bad_media"
    # what the requirements collated, by name (mmpo.requirements: each one's `collate` says what it holds), e.g.
    # "corrupt": prompts with corrupted media; "bag": {"prompts": K prompt batches, "mask": [B, K]}; "gt": answers
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "PairBatch":
        """The batch with every tensor on `device`."""
        return dataclasses.replace(self, **{f.name: _to(getattr(self, f.name), device) for f in dataclasses.fields(self)})


@dataclass(frozen=True)
class SFTBatch:
    """One micro-batch of B supervised samples: the answer's tokens are the only labels."""

    ids: list[str]  # B record ids
    prompt: dict  # encode_prompts: [B, Lp], LEFT-padded, + media tensors
    answer: dict  # encode_answers: [B, La], RIGHT-padded, EOS appended
    skipped: list  # (id, kind, message) of records left out of this batch

    def to(self, device) -> "SFTBatch":
        return dataclasses.replace(self, prompt=_to(self.prompt, device), answer=_to(self.answer, device))


def _to(obj, device):
    """Every tensor in a nested dict / list on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj


def _nothing_left(batch_type, skipped: list):
    """The batch of a draw whose records were all left out (the trainer skips it on every rank)."""
    if batch_type is SFTBatch:
        return SFTBatch([], {}, {}, skipped)
    return PairBatch([], {}, {}, {}, torch.zeros(0), skipped)


@dataclass
class PairCollator:
    """Turns a list of PairRecords into a `PairBatch`, with what the loss terms `requires` (each requirement's
    collate piece, `mmpo.requirements`) in its `extra`."""

    processor: object
    media_root: str
    num_frames: int = 8
    max_length: int = 4096  # the trainer passes the resolved data.max_length
    on_bad: str = "error"
    requires: frozenset = field(default_factory=frozenset)

    def _media(self, rec: PairRecord, rels=None):
        return load_media(self.media_root, rels or rec.media, rec.media_type, self.num_frames)

    def _too_long(self, batch: PairBatch, recs: list[PairRecord]) -> list[tuple[str, str, str]]:
        plen = batch.prompt["attention_mask"].sum(-1)
        if "rejected_media" in batch.extra:  # other media on the rejected side may cost more tokens (anyres)
            plen = torch.maximum(plen, batch.extra["rejected_media"]["attention_mask"].sum(-1))
        alen = torch.maximum(batch.chosen["attention_mask"].sum(-1), batch.rejected["attention_mask"].sum(-1))
        return [(r.id, "too_long", too_long_message(r, int(p + a), self.max_length))
                for r, p, a in zip(recs, plen, alen, strict=True) if p + a > self.max_length]

    def __call__(self, recs: list[PairRecord]) -> PairBatch:
        skipped: list[tuple[str, str, str]] = []
        while True:
            batch, media_errors = self._encode(recs)
            bad = media_errors + (self._too_long(batch, recs) if batch else [])
            if not bad:
                return dataclasses.replace(batch, skipped=skipped)
            if self.on_bad == "error":
                raise ValueError(bad[0][2])
            skipped += bad
            bad_ids = {b[0] for b in bad}
            recs = [r for r in recs if r.id not in bad_ids]
            if not recs:
                return _nothing_left(PairBatch, skipped)

    def _encode(self, recs: list[PairRecord]) -> tuple[PairBatch | None, list]:
        media, errors = [], []
        for r in recs:
            check_record_media(r, self.processor)
            try:
                media.append(self._media(r))
            except MediaError as exc:
                errors.append((r.id, "bad_media", f"{r.where or 'record ' + r.id}: {exc}"))
        if errors:
            return None, errors
        kinds = {r.media_type for r in recs}
        if len(kinds) > 1:
            raise ValueError("a batch mixes images and videos; sort or split the pair file by media_type")
        mtype = recs[0].media_type
        prompts = [r.prompt for r in recs]
        pieces = Collating(self.processor, recs, media, prompts, mtype, self._media)
        extra = {r.name: value for r in needed(self.requires) if (value := r.collate(pieces)) is not None}
        batch = PairBatch(
            ids=[r.id for r in recs], prompt=encode_prompts(self.processor, prompts, media, mtype),
            chosen=encode_answers(self.processor, [r.chosen for r in recs]),
            rejected=encode_answers(self.processor, [r.rejected for r in recs]),
            weight=torch.tensor([1.0 if r.weight is None else r.weight for r in recs]), skipped=[], extra=extra)
        return batch, []


@dataclass
class SFTCollator:
    """Turns SFTRecords into an `SFTBatch` for answer-only NLL training."""

    processor: object
    media_root: str
    num_frames: int = 8
    max_length: int = 4096  # the trainer passes the resolved data.max_length
    on_bad: str = "error"

    def __call__(self, recs: list[SFTRecord]) -> SFTBatch:
        skipped, keep, media = [], [], []
        for r in recs:
            check_record_media(r, self.processor)
            try:
                media.append(load_media(self.media_root, r.media, r.media_type, self.num_frames))
                keep.append(r)
            except MediaError as exc:
                if self.on_bad == "error":
                    raise
                skipped.append((r.id, "bad_media", f"{r.where or 'record ' + r.id}: {exc}"))
        if not keep:
            return _nothing_left(SFTBatch, skipped)
        mtype = keep[0].media_type
        prompt = encode_prompts(self.processor, [r.prompt for r in keep], media, mtype)
        answer = encode_answers(self.processor, [r.answer for r in keep])
        lengths = (prompt["attention_mask"].sum(-1) + answer["attention_mask"].sum(-1)).tolist()
        too_long = [(r.id, "too_long", too_long_message(r, n, self.max_length))
                    for r, n in zip(keep, lengths, strict=True) if n > self.max_length]
        if too_long:
            if self.on_bad == "error":
                raise ValueError(too_long[0][2])
            skipped += too_long
            ok = [r for r, n in zip(keep, lengths, strict=True) if n <= self.max_length]
            if not ok:
                return _nothing_left(SFTBatch, skipped)
            return dataclasses.replace(self(ok), skipped=skipped)
        return SFTBatch([r.id for r in keep], prompt, answer, skipped)


class SkipLedger:
    """Records left out of training, each counted and logged once, whatever the number of epochs.

    A record that is too long or has unreadable media is dropped from every batch it is drawn into; counting
    draws would count it once per epoch, and logging each draw would repeat the same line. The ledger keeps
    one reason per record id (it goes into checkpoints, so a resumed run keeps its counts).
    """

    def __init__(self, invalid_lines: int = 0, state: dict | None = None):
        self.invalid_lines = invalid_lines  # lines refused on read (they have no usable id)
        self.reasons: dict[str, tuple[str, str]] = {k: tuple(v) for k, v in (state or {}).items()}

    def note(self, skipped: list[tuple[str, str, str]]) -> None:
        for rid, kind, message in skipped:
            if rid not in self.reasons:
                self.reasons[rid] = (kind, message)
                log.warning("skipping %s", message)

    def merge(self, other_states: list[dict]) -> None:
        """Add the records other processes left out (DDP ranks see different batches)."""
        for state in other_states:
            for rid, reason in state.items():
                self.reasons.setdefault(rid, tuple(reason))

    def state(self) -> dict:
        return dict(self.reasons)

    def total(self) -> int:
        return self.invalid_lines + len(self.reasons)

    def by_reason(self) -> dict[str, int]:
        counts = {"invalid_line": self.invalid_lines}
        for kind, _ in self.reasons.values():
            counts[kind] = counts.get(kind, 0) + 1
        return counts


# -- data order ---------------------------------------------------------------------------------

class MicroBatches(torch.utils.data.Dataset):
    """Micro-batches `start` .. `total - 1` of a run, collated on demand; the order is a pure function of the seed.

    Each epoch is a seeded permutation cut into `n // (batch_size * world)` full batches (the tail is dropped,
    so every micro-batch has the same size and accumulation 1x8 equals 8x1); rank r of `world` processes takes
    every world-th batch. Indices are computed when a batch is asked for, from one permutation per epoch, so
    nothing is laid out before step 1 (848k records: one 50 ms permutation instead of 2.6 h of per-batch ones),
    and a resumed run starts at `start` with exactly the batches an uninterrupted run would have drawn.
    A map-style dataset, so DataLoader workers decode and augment media in parallel.
    """

    def __init__(self, records, collate, batch_size: int, seed: int, start: int, total: int, shuffle: bool,
                 world: int = 1, rank: int = 0):
        self.records, self.collate, self.batch_size, self.seed = records, collate, batch_size, seed
        self.start, self.total, self.shuffle, self.world, self.rank = start, total, shuffle, world, rank
        self.per_epoch = max(len(records) // (batch_size * world), 1)
        self._epoch, self._order = None, None

    def __len__(self) -> int:
        return self.total - self.start

    def indices(self, g: int) -> list[int]:
        """Record indices of global micro-batch `g`."""
        epoch, pos = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            n = len(self.records)
            self._order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
                           if self.shuffle else torch.arange(n))
            self._epoch = epoch
        first = (pos * self.world + self.rank) * self.batch_size
        return self._order[[(first + i) % len(self.records) for i in range(self.batch_size)]].tolist()

    def __getitem__(self, i: int) -> dict:
        return self.collate([self.records[j] for j in self.indices(self.start + i)])


def make_loader(records, collate, batch_size, seed, start, total, shuffle, workers, world=1, rank=0):
    """A DataLoader over `MicroBatches` (each item one collated micro-batch)."""
    dataset = MicroBatches(records, collate, batch_size, seed, start, total, shuffle, world, rank)
    # Its own generator: iterating a DataLoader draws a worker seed, and from the global stream that draw would
    # shift dropout's masks in a resumed run (whose iterator starts after the RNG state is restored).
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       persistent_workers=False, generator=torch.Generator().manual_seed(seed))

