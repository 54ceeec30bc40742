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


class MediaCopier:
    """`copier(rels)`: the media paths `rels` (under `media_root`) as paths in the written folder `out`, each file
    copied to `out/media/<rel>` the first time it is named. A writer's `write_rows` gets one."""

    def __init__(self, out: Path, media_root):
        self.out, self.media_root, self.done = out, media_root, set()

    def __call__(self, rels) -> list[str]:
        paths = []
        for rel in rels:
            dest = f"{EXPORT_MEDIA}/{rel}"
            if dest not in self.done:
                (self.out / dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(resolve_media(self.media_root, rel), self.out / dest)
                self.done.add(dest)
            paths.append(dest)
        return paths
