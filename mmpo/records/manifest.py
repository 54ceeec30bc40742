"""`manifest.json` beside a built set (counts, skips, config, seed, version, media root) and the one rule that
finds a record file's media root (`default_media_root`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmpo import __version__
from mmpo.records.schema import SCHEMA_VERSION, RecordError

MANIFEST_FILE = "manifest.json"


def write_manifest(out_dir: str | Path, counts: dict, config: dict, seed: int, skipped: list | None = None,
                   media_root: str | Path | None = None, **extra: Any) -> Path:
    """Write `manifest.json` next to a built set: counts per kind, skipped items, config, seed, version.

    Args:
        out_dir: the set's folder.
        counts: counters per kind.
        config: the builder's config as a dict.
        seed: the build's seed.
        skipped: skipped inputs with their reasons.
        media_root: the folder the set's media paths are relative to; recorded so the set trains with no
            `data.media_root` (read back by `default_media_root`).
        **extra: more top-level keys.

    Returns:
        The manifest's path.
    """
    path = Path(out_dir) / MANIFEST_FILE
    body = {"mmpo_version": __version__, "schema_version": SCHEMA_VERSION, "seed": seed, "counts": counts,
            "skipped": skipped or [], "config": config}
    if media_root is not None:
        root = Path(media_root).resolve()
        # Relative first: a set and its media usually travel together (a project folder copied to a cluster,
        # mounted in a container, renamed), and a relative path survives every such move while an absolute one
        # breaks on any new prefix. The absolute path covers the other move: the set folder alone, media left
        # in place. `default_media_root` tries them in that order.
        body["media_root"] = os.path.relpath(root, Path(out_dir).resolve())
        body["media_root_absolute"] = str(root)
    body.update(extra)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(body, indent=2, default=str))
    tmp.replace(path)
    return path


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest written into `out_dir` ({} when there is none)."""
    path = Path(out_dir) / MANIFEST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _manifest_media_root(manifest: Path) -> Path | None:
    """The media root a manifest records (relative entry if that folder exists, else the absolute one)."""
    if not manifest.is_file():
        return None
    try:
        body = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"{manifest}: invalid JSON ({exc.msg} at line {exc.lineno}); fix or delete it, "
                          "or set the media root explicitly") from None
    if not isinstance(body, dict) or not body.get("media_root"):
        return None  # a manifest from before media roots were recorded, or not a builder's
    relative = (manifest.parent / body["media_root"]).resolve()
    absolute = body.get("media_root_absolute")
    if not relative.is_dir() and absolute and Path(absolute).is_dir():
        return Path(absolute)
    return relative  # when neither exists, the missing-media error names this path


def default_media_root(data_path: str | Path, explicit: str | Path | None = None) -> Path:
    """The folder a record file's media paths are relative to: the one rule every reader uses.

    Precedence: `explicit` (a config's `media_root`) > the media root recorded in the `manifest.json` beside
    the file (every builder writes one, so its output trains as is) > the file's own folder.

    Args:
        data_path: a pair or SFT JSONL file.
        explicit: a media root given by the user ("" or None = not given).

    Returns:
        The media root, absolute.
    """
    if explicit:
        return Path(explicit).resolve()
    folder = Path(data_path).resolve().parent
    recorded = _manifest_media_root(folder / MANIFEST_FILE)
    return recorded if recorded is not None else folder
