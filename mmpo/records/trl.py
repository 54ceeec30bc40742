"""Pairs as TRL's conversational vision-preference rows (`to_trl_rows`) or a `datasets.Dataset` of them
(`to_trl_dataset`), ready for TRL's `DPOTrainer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mmpo.records.media_paths import resolve_media
from mmpo.records.schema import PairRecord


def _trl_content(r: PairRecord) -> str | list[dict]:
    """The user message's content for TRL: the prompt as a string when the media go before it (TRL puts one image
    part per image first), typed parts when the prompt places its images with `<image>` markers."""
    marker = "<image>" if r.media_type == "image" else "<video>"
    if marker not in r.prompt:
        return r.prompt
    parts: list[dict] = []
    for k, text in enumerate(r.prompt.split(marker)):
        if k:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def to_trl_rows(records: Iterable[PairRecord], media_root: str | Path) -> list[dict]:
    """Rows in TRL's conversational vision-preference layout: prompt / chosen / rejected / images (+ id).

    The prompt is one user message and each answer one assistant message, so TRL's DPOTrainer renders them with
    the model's own chat template and inserts one image placeholder per entry of `images` (absolute paths;
    `to_trl_dataset` decodes them), all before the text; a prompt with `<image>` markers (several images placed
    in the text) becomes typed content parts, an image part at each marker. Video pairs keep their clip paths
    under `images` too: TRL 1.16 has no video collator, and that column name makes it skip its text-only
    preprocessing, so a custom `data_collator` can load the clips (benchmarks/train_vs_trl.py has one).

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
            "prompt": [{"role": "user", "content": _trl_content(r)}],
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
