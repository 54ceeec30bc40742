"""The reference policy's log-probs: the policy with its adapters off, or a table computed once and cached.

The reference is never a second copy of the weights: with LoRA it is the same model with its adapter layers
disabled (`mmpo.models.AdaptersOff`), run without gradients. With `precompute_reference` it is computed
once, before step 1, in one pass over the data, and cached next to the data under a key of everything
that changes the numbers (data digest, model, requirements, lengths, frames, layout); a reference-free
loss skips it, and the distillation schedule passes its teacher instead (`mmpo.distill`).
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from mmpo.distributed import gather_objects
from mmpo.models import AdaptersOff, has_adapter
from mmpo.models.loading import fingerprint, model_fingerprint
from mmpo.requirements import PairLogps, pair_logps


def adapter_reference(model, requires: set, shared_prefix: bool) -> Callable:
    """Reference = the same model with its adapters disabled, no grad.

    Without an adapter (full fine-tuning) this is only valid before the first update, i.e. for the
    precomputed-reference pass; `train` enforces that.
    """
    adapters_off = AdaptersOff(model) if has_adapter(model) else contextlib.nullcontext

    def reference(batch) -> PairLogps:
        with torch.no_grad(), adapters_off():
            return pair_logps(model, batch, requires, shared_prefix)
    return reference


def cache_path(cfg, digest: str, requires: set, max_length: int, media_root) -> Path:
    """Where the precomputed table of this data, model and layout lives: `<train file>.refcache/<key>.pt`.

    The key holds everything that changes the numbers: the data's bytes and media root, the model, what the
    losses require, the length limit, frames, the packed layout and the precision.
    """
    key = fingerprint(digest, str(media_root), model_fingerprint(cfg.model), sorted(requires), max_length,
                      cfg.model.num_frames, cfg.shared_prefix, cfg.precision)
    return Path(str(cfg.data.train) + ".refcache") / f"{key}.pt"


def load_reference_cache(path: Path) -> dict[str, dict]:
    """The cached {record id: {name: tensor}}; anything but tensors and plain containers is refused.

    The cache sits next to the user's data, where anyone who can write a data file can write it too: a
    full unpickle would run whatever code such a file names.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refusing to load a reference cache that holds more than tensors "
                         f"(delete it to recompute): {str(exc).splitlines()[0]}") from None


def precompute_reference(reference: Callable, records, collate, batch_size: int, cache_path: Path, procs,
                         device, context=contextlib.nullcontext) -> dict[str, dict]:
    """One pass over the data under the reference: {record id: {name: value}} (`PairLogps.table`), saved to
    `cache_path`.

    With several processes the pass is split: under DDP each rank computes every world-th batch with its own
    copy of the model and the parts are gathered; under FSDP2 every forward needs all the ranks, so each runs
    every batch (the same ones, in the same order, so batches left empty by skipped records are skipped
    alike) — `world` times the work, kept simple and safe. The main process writes the file.

    Args:
        reference: batch -> log-probs (the policy with adapters off).
        records: the training records (a sequence).
        collate: records -> batch.
        batch_size: records per forward.
        cache_path: the file (loaded instead when it exists).
        procs: the `mmpo.distributed.Processes`.
        device: where batches go.
        context: a context factory around each forward (the training precision's autocast).

    Returns:
        The table.
    """
    if cache_path.is_file():
        return load_reference_cache(cache_path)
    starts = range(0, len(records), batch_size)
    mine = starts if procs.sharded else starts[procs.rank::procs.world]
    table: dict[str, dict] = {}
    for start in tqdm(mine, desc="reference log-probs", leave=False, disable=not procs.is_main):
        batch = collate(records[start:start + batch_size]).to(device)
        if not batch.ids:
            continue
        with context():
            out = reference(batch)
        for i, rid in enumerate(batch.ids):
            table[rid] = {k: v[i].detach().float().cpu() for k, v in out.table().items()}
    if not procs.sharded:
        for part in gather_objects(table, procs.world):
            table.update(part)
    if procs.is_main:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        torch.save(table, tmp)
        tmp.replace(cache_path)
    return table


def cached_reference(table: dict[str, dict], device) -> Callable:
    """The reference callable that reads the precomputed table (by record id) instead of running a model."""
    def reference(batch) -> PairLogps:
        rows = [table[rid] for rid in batch.ids]
        return PairLogps.from_table({k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0]})
    return reference
