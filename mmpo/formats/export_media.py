"""What the writers of other layouts share (`mmpo/formats/writers.py` and each family's `write_rows`): the pairs a
target cannot hold are refused, and media files are copied beside the rows once each, so the folder written is
self-contained.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mmpo.records import PairRecord, resolve_media

EXPORT_MEDIA = "media"


def check_writable(r: PairRecord, target: str, allow_rejected_media: bool = False) -> None:
    """Refuse what the target cannot hold: a rejection in augmentations (or in other media, except ms-swift)."""
    if r.rejected_bag is not None or (r.rejected_media is not None and not allow_rejected_media):
        raise ValueError(f"pair {r.id}: its rejection is in the media (rejected_media / rejected_bag), which "
                         f"{target}'s preference format cannot hold")


class _Copier:
    """Copies a record's media under `out/media/` (same relative paths), once per file."""

    def __init__(self, out: Path):
        self.out, self.done = out, set()

    def __call__(self, root, rels) -> list[str]:
        paths = []
        for rel in rels:
            dest = f"{EXPORT_MEDIA}/{rel}"
            if dest not in self.done:
                (self.out / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(resolve_media(root, rel), self.out / dest)
                self.done.add(dest)
            paths.append(dest)
        return paths


_COPIER: list[_Copier] = []


def media_paths(r: PairRecord, media_root, rels=None) -> list[str]:
    """The record's media as paths in the written folder (copied there by the active writer)."""
    return _COPIER[-1](media_root, r.media if rels is None else rels)


def with_copier(out: Path, fn, records, media_root):
    """`fn(records, media_root)` with `media_paths` copying into `out/media/` (the writer's folder)."""
    _COPIER.append(_Copier(out))
    try:
        return fn(records, media_root)
    finally:
        _COPIER.pop()
