"""Pieces the training schedules share (`mmpo.multi_round`, `mmpo.distill`): derived configs, merged models,
fresh adapters, on-policy generation and seeds (whether a run finished is `mmpo.checkpoint.finished`). Each
schedule wraps the one loop in `mmpo.trainer.train`; none copies it.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import numpy as np
import torch

from mmpo.config import ModelConfig, TrainConfig
from mmpo.media import MediaError, load_media
from mmpo.models import add_lora, generate_answers, has_adapter, load_model
from mmpo.records import SFTRecord, scan_records, write_jsonl

log = logging.getLogger(__name__)


def derived_config(cfg: TrainConfig, **changes) -> TrainConfig:
    """A deep copy of `cfg` with top-level fields replaced (and `data.*` via `data_*` keys)."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        if key.startswith("data_"):
            setattr(out.data, key[5:], value)
        else:
            setattr(out, key, value)
    return out


def is_sharded(model) -> bool:
    """True once FSDP2 has split the model's weights over the processes (`mmpo.distributed.shard_from_main`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes shared files under `accelerate launch`."""
    return int(os.environ.get("RANK", "0")) == 0


def write_atomic(path: Path, records: list) -> None:
    """Write a JSONL file under a temporary name and rename it, so an existing file is always complete.

    The temporary name is per process: under `accelerate launch` every rank generates the same pairs
    (same seed, same model) and may write them; each rename is atomic, so readers never see half a file.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write_jsonl(tmp, records)
    os.replace(tmp, path)


def load_merged(model_cfg: ModelConfig, adapters: list[Path] = ()):
    """Load `model_cfg` (its own adapter merged in), then merge `adapters` one after another.

    Args:
        model_cfg: the base model (path, optional adapter, dtype, device, 4-bit).
        adapters: PEFT adapter folders merged in order (rounds 1..r-1 of a multi-round run).

    Returns:
        (plain frozen model in eval mode, processor).
    """
    from peft import PeftModel

    model, processor = load_model(model_cfg, None, trainable=False)
    if has_adapter(model):
        model = model.merge_and_unload()
    for folder in adapters:
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    model.requires_grad_(False)
    return model.eval(), processor


def fresh_lora(model, cfg: TrainConfig, salt: int):
    """Attach a new LoRA (lora_B = 0, so no effect yet); lora_A init seeded for reproducible reruns."""
    torch.manual_seed(seed_for(cfg.seed, "fresh_lora", salt))
    return add_lora(model, cfg.lora)


def media_groups(records: list, size: int):
    """Consecutive groups of `size` records that share a media type (processors cannot mix them)."""
    group: list = []
    for rec in records:
        if group and (len(group) == size or group[0].media_type != rec.media_type):
            yield group
            group = []
        group.append(rec)
    if group:
        yield group


def read_prompts(cfg: TrainConfig, media_root: str) -> tuple[list[SFTRecord], list[str]]:
    """A schedule's SFT prompts file, honouring `data.on_bad_record` as `mmpo.trainer.train` does: bad lines and
    missing media raise naming file:line, or (skip) are left out, logged once and returned as "file:line: reason".
    """
    records, skipped = scan_records(cfg.data.train, "sft", media_root, cfg.data.on_bad_record)
    try:
        return list(records), skipped
    finally:
        records.close()


def _media_or_skip(record: SFTRecord, media_root: str, num_frames: int, on_bad: str, skipped: list[str]):
    """The record's decoded media, or None (on_bad "skip") with the reason added to `skipped` and logged once."""
    try:
        return load_media(media_root, record.media, record.media_type, num_frames)
    except MediaError as exc:
        where = record.where or f"record {record.id!r}"
        if on_bad != "skip":
            raise MediaError(f"{where}: {exc} (data.on_bad_record=skip leaves such records out)") from None
        skipped.append(f"{where}: {exc}")
        log.warning("skipping %s: %s", where, exc)
        return None


def generate_for(model, processor, records: list[SFTRecord], media_root: str, num_frames: int, *, batch_size: int,
                 num_samples: int, temperature: float, max_new_tokens: int, seed: int, on_bad: str = "error",
                 skipped: list[str] | None = None) -> list[list[str]]:
    """Answers for every SFT record's (media, prompt); batch b is seeded with `seed + b`.

    Media are decoded here, so a corrupt file is met here (not when the prompts file is read, which only checks
    that the files exist): `on_bad` "error" raises naming the record's file:line; "skip" gives the record no
    answers (an empty list, which no pair or rebirth sample is made from) and adds it to `skipped`.

    Returns:
        One list of `num_samples` answers per record (empty for a skipped record), in record order.
    """
    model.eval()
    skipped = [] if skipped is None else skipped
    out: list[list[str]] = []
    for b, group in enumerate(media_groups(records, batch_size)):
        media = [_media_or_skip(r, media_root, num_frames, on_bad, skipped) for r in group]
        usable = [(r, m) for r, m in zip(group, media) if m is not None]
        answers = iter(generate_answers(model, processor, [r.prompt for r, _ in usable], [m for _, m in usable],
                                        group[0].media_type, num_samples=num_samples, temperature=temperature,
                                        max_new_tokens=max_new_tokens, seed=seed + b) if usable else [])
        out += [next(answers) if m is not None else [] for m in media]
    return out


def seed_for(seed: int, *purpose) -> int:
    """A seed for one purpose of a run (a round's sampling, a fresh LoRA), independent of the others.

    `numpy.random.SeedSequence` mixes the run seed with the purpose, as `mmpo/builders/augment.py` does,
    instead of magic multipliers whose products can collide.
    """
    words = [seed] + [int.from_bytes(str(p).encode(), "little") % 2**32 for p in purpose]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
