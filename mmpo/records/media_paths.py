"""Media paths in records: relative to a media root and never outside it (`resolve_media`), checked to name
files once per distinct path (`MediaCheck`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from mmpo.records.schema import field_error


def resolve_media(root: str | Path, rel: str) -> Path:
    """Resolve `rel` under `root`; paths may not escape the root (no `..`, no absolute paths).

    The check is on the path as written, not on symlink targets: a data file must not reach outside the
    root, but a link the user put inside it may point anywhere (the Hugging Face cache keeps each file as
    a link from `snapshots/` into `blobs/`).
    """
    root = Path(os.path.abspath(root))
    path = Path(os.path.normpath(root / rel))
    if path != root and root not in path.parents:
        raise ValueError(f"media path {rel!r} escapes the media root {str(root)!r}")
    return path


class MediaCheck:
    """Checks that media paths name files under a root, remembering the answer for each distinct path.

    Pair files name the same image or clip many times (several questions per image, several pairs per
    question). Stat-ing the path again for every record took 57 of the 67 s spent reading 848k pairs
    (benchmarks/RESULTS.md), so each distinct path is checked once per read. Memory stays bounded: only the
    `max_paths` most recently used answers are kept. The rule is `resolve_media`'s.
    """

    def __init__(self, root: str | Path, max_paths: int = 65536):
        self.root = Path(os.path.abspath(root))
        self.max_paths = max_paths
        self._known: OrderedDict[str, str] = OrderedDict()  # relative path -> "" (usable) or what is wrong

    def problem(self, rel: str) -> str:
        """What is wrong with media path `rel` ("" when it is a file under the root)."""
        if rel in self._known:
            self._known.move_to_end(rel)
            return self._known[rel]
        try:
            full = resolve_media(self.root, rel)
            msg = "" if full.is_file() else f"missing media file {str(full)!r}"
        except ValueError as exc:
            msg = str(exc)
        self._known[rel] = msg
        if len(self._known) > self.max_paths:
            self._known.popitem(last=False)
        return msg

    def __call__(self, paths: tuple[str, ...], where: str, name: str) -> None:
        """Raise RecordError naming `where` and field `name` for the first unusable path."""
        for rel in paths:
            msg = self.problem(rel)
            if msg:
                raise field_error(where, name, msg)


def media_check(media_root: str | Path | MediaCheck | None) -> MediaCheck | None:
    if media_root is None or isinstance(media_root, MediaCheck):
        return media_root
    return MediaCheck(media_root)
