"""What every reader shares: unmappable rows, media references, image markers, conversation turns.

A reader maps one source row to mmpo record fields and hands media to a `MediaSink`; it never writes files
itself. Two sinks exist: `MediaStore` (bytes written once under `media/<sha256>.<ext>`, paths read in place
through the `source` link) and `DryMedia` (the validation pass before training: nothing read, nothing written).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from mmpo.records import MediaCheck

MARKERS = {"image": "<image>", "video": "<video>"}
MEDIA_DIR = "media"  # content-addressed bytes, under the converted set's root
SOURCE_LINK = "source"  # a link, under the converted set's root, to the folder in-place paths are relative to


class Unmappable(ValueError):
    """A source row that cannot become an mmpo record; `reason` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def need(row: dict, key: str, kind: type | tuple = str) -> Any:
    """row[key], which must be present and of `kind` (a non-empty string when `kind` is str)."""
    if key not in row or row[key] is None:
        raise Unmappable("missing_field", f"no {key!r} (keys: {sorted(row)})")
    value = row[key]
    if not isinstance(value, kind):
        raise Unmappable("bad_field", f"{key!r} is {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
    if isinstance(value, str) and not value.strip():
        raise Unmappable("empty_text", f"{key!r} is empty")
    return value


def text_of(value: Any, where: str) -> str:
    """A message content as text: a string, or typed parts (`{"type": "text", "text"|"value": ...}`) joined.

    Image parts become `<image>` markers in place, so their position survives like a tag's would.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for part in value:
            if not isinstance(part, dict):
                raise Unmappable("bad_field", f"{where}: a content part is {type(part).__name__}")
            kind = part.get("type")
            if kind == "text":
                out.append(part.get("text") if part.get("text") is not None else part.get("value") or "")
            elif kind in ("image", "image_url", "video", "video_url"):
                out.append(MARKERS["video" if kind.startswith("video") else "image"])
            else:
                raise Unmappable("bad_field", f"{where}: unknown content part type {kind!r}")
        return "".join(out)
    raise Unmappable("bad_field", f"{where}: content is {type(value).__name__}")


def render_turns(turns: list[tuple[str, str]]) -> str:
    """A conversation's turns as one prompt: earlier turns kept as "USER: ..." / "ASSISTANT: ..." lines.

    mmpo pairs hold one prompt (the model templates it as one user turn), so a multi-turn history is kept in
    that text rather than dropped; a single user turn is returned as it is.
    """
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    names = {"user": "USER", "assistant": "ASSISTANT"}
    return "\n".join(f"{names[role]}: {text}" for role, text in turns)


def place_markers(prompt: str, media_type: str, n_media: int) -> str:
    """Apply the image-marker convention to a prompt holding `n_media` media of `media_type`.

    Markers (`<image>` / `<video>`) must be absent or one per media item. When they all lead the prompt (LLaVA's
    `"<image>\\n"` prefix, the usual case) they are stripped: a prompt without markers puts all media before the
    text, which is the same thing. Interleaved markers are kept, in order.
    """
    marker = MARKERS[media_type]
    other = MARKERS["image" if media_type == "video" else "video"]
    if other in prompt:
        raise Unmappable("marker_mismatch", f"{other} marker in a {media_type} prompt")
    count = prompt.count(marker)
    if count and count != n_media:
        raise Unmappable("marker_mismatch", f"{count} {marker} markers for {n_media} {media_type}(s)")
    lead = re.match(rf"^(\s*{re.escape(marker)}\s*)+", prompt)
    if count and lead and lead.group(0).count(marker) == count:
        prompt = prompt[lead.end():]
    if not prompt.strip():
        raise Unmappable("empty_text", "the prompt is only media markers")
    return prompt


def strip_leading(prompt: str, markers: tuple[str, ...] = ("<image>", "<video>")) -> str:
    """Drop markers a loader prepends whatever the media (LLaVA-NeXT writes `<image>\\n` before video prompts)."""
    pattern = "|".join(re.escape(m) for m in markers)
    return re.sub(rf"^(\s*({pattern})\s*)+", "", prompt)


_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"RIFF", "webp"), (b"BM", "bmp"))


def _extension(data: bytes, name: str | None) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    suffix = Path(name or "").suffix.lstrip(".").lower()
    return suffix if suffix.isalnum() and suffix else "bin"


def media_value(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) of a media cell: a path string, raw bytes, or an HF `Image` struct `{bytes, path}`."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        return value.get("bytes"), value.get("path")
    raise Unmappable("bad_media", f"a media cell is {type(value).__name__}")


class MediaStore:
    """Where a conversion puts media: bytes once per content, paths read in place through a link.

    Attributes:
        root: the converted set's root (its records' media paths are relative to it).
        source_dir: the folder path references in the source are relative to.
    """

    def __init__(self, root: str | Path, source_dir: str | Path):
        self.root, self.source_dir = Path(root), Path(source_dir).resolve()
        self.check = MediaCheck(self.source_dir)
        self.written = 0  # new files written (identical content is stored once)

    def put(self, value: Any) -> str:
        """The root-relative path of one media cell (bytes stored, or the source path checked to exist)."""
        data, path = media_value(value)
        if data:
            digest = hashlib.sha256(data).hexdigest()
            rel = f"{MEDIA_DIR}/{digest[:2]}/{digest}.{_extension(data, path)}"
            full = self.root / rel
            if not full.is_file():
                full.parent.mkdir(parents=True, exist_ok=True)
                tmp = full.with_name(f".{full.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                tmp.replace(full)  # atomic: a DataLoader worker never sees half an image
                self.written += 1
            return rel
        if not path:
            raise Unmappable("missing_media", "a media cell has neither bytes nor a path")
        problem = self.check.problem(path)
        if problem:
            raise Unmappable("missing_media", problem)
        link = self.root / SOURCE_LINK
        if not link.is_symlink():
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                link.symlink_to(self.source_dir, target_is_directory=True)
            except FileExistsError:  # another worker made it
                pass
        return f"{SOURCE_LINK}/{os.path.normpath(path)}"


class DryMedia:
    """The validation pass's sink: checks a media cell has bytes or an existing path, writes nothing."""

    def __init__(self, source_dir: str | Path):
        self.check = MediaCheck(Path(source_dir).resolve())

    def put(self, value: Any) -> str:
        if isinstance(value, dict) and "bytes" not in value:  # only the path of an embedded-media column was
            return f"{MEDIA_DIR}/pending"                    # read for validation: its bytes come when it is used
        data, path = media_value(value)
        if data:
            return f"{MEDIA_DIR}/pending"
        if not path:
            raise Unmappable("missing_media", "a media cell has neither bytes nor a path")
        problem = self.check.problem(path)
        if problem:
            raise Unmappable("missing_media", problem)
        return f"{SOURCE_LINK}/{os.path.normpath(path)}"


def turns_prompt(turns: list[tuple[str, str]], media_type: str, n_media: int) -> str:
    """A conversation's prompt turns as one prompt, markers placed by `place_markers`' rule.

    The rule looks at the first user turn: markers leading it (all of them) are stripped; markers anywhere
    else stay where they are, in the rendered history.
    """
    if not turns:
        raise Unmappable("bad_conversation", "no prompt turns")
    marker = MARKERS[media_type]
    count = sum(text.count(marker) for _, text in turns)
    first = turns[0][1]
    if count and count == first.count(marker) and count == n_media:
        first = place_markers(first, media_type, n_media)
    elif len(turns) == 1:
        first = place_markers(first, media_type, n_media)
    else:
        other = MARKERS["image" if media_type == "video" else "video"]
        if any(other in text for _, text in turns):
            raise Unmappable("marker_mismatch", f"{other} marker in a {media_type} prompt")
        if count and count != n_media:
            raise Unmappable("marker_mismatch", f"{count} {marker} markers for {n_media} {media_type}(s)")
    return render_turns([(turns[0][0], first), *turns[1:]])
