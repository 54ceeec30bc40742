"""Decode images and videos, sample frames, and corrupt media with seeded augmentations.

In memory, an image is an RGB `PIL.Image.Image` and a video is an `np.ndarray` of shape (T, H, W, 3),
dtype uint8 (docs/ARCHITECTURE.md, "Shared conventions").

Decoding: images with PIL (mode conversion, EXIF orientation), videos with decord, or PyAV where
decord fails or the video is rotated (one thread per reader; frame indices sampled uniformly or at a
target fps; `load_video_info` says which decoder ran). Every failure, a truncated video included, is a
`MediaError` whose message starts with the file path.

Augmentations are pure functions `fn(media, rng, **params) -> media` in the plain dict
`AUGMENTATIONS`; `augment(media, AugSpec)` seeds `rng` from the spec, so the same spec always gives
the same pixels. They build the rejected side of conditional-media pairs: mDPO's image corruption
(`mdpo_crop`, luka-group/mDPO) and the PaMi-VDPO augmentation pool (docs/METHODS.md §1: frame shuffle,
temporal reversal and random crop confirmed; the other ops are our reconstruction). Per-frame ops
(noise, blur, jitter, crops, masks) have one implementation on (T, H, W, 3) arrays; an image goes
through the same code as a one-frame video.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from mmpo.records import AugSpec, resolve_media

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class MediaError(ValueError):
    """Media that cannot be used: missing, unreadable, truncated or empty. The message names the file."""


# -- images --------------------------------------------------------------------------------------

def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white (not black, which is
    what a bare `convert("RGB")` gives for RGBA and would add dark blobs the model never sees)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: rescale to 0..255 first; convert("L") would clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # L, 1, P (opaque), CMYK, YCbCr, LAB, HSV


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as RGB with its EXIF orientation applied.

    Args:
        path: image file.

    Returns:
        RGB `PIL.Image.Image`, fully loaded (the file is closed).

    Raises:
        MediaError: missing or unreadable file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: missing image file")
    try:
        with Image.open(path) as img:
            img.load()
            # Phone photos store rotation in EXIF; without this the model sees them sideways.
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{path}: unreadable image ({exc})") from exc


# -- videos --------------------------------------------------------------------------------------

def sample_indices(num_total: int, num_frames: int | None = 8, fps: float | None = None,
                   video_fps: float | None = None) -> np.ndarray:
    """Frame indices to decode from a clip of `num_total` frames.

    Uniform mode (`fps=None`): `round(linspace(0, num_total - 1, num_frames))`, the sampler of the
    LLaVA-NeXT-Video / LLaVA-OneVision inference code; a clip shorter than `num_frames` repeats frames,
    so T is always `num_frames`. Fps mode: one frame every `video_fps / fps` source frames, then
    uniformly subsampled down to at most `num_frames` (so a short clip gives fewer frames).

    Args:
        num_total: frames in the clip (> 0).
        num_frames: frames wanted (uniform) or the cap (fps mode; None = no cap).
        fps: target sampling rate in frames per second, or None for uniform sampling.
        video_fps: the clip's frame rate (needed in fps mode).

    Returns:
        np.ndarray of int64 indices in [0, num_total).
    """
    if num_total <= 0:
        raise ValueError("num_total must be positive")
    if fps is None:
        if not num_frames or num_frames <= 0:
            raise ValueError("uniform sampling needs num_frames > 0")
        return np.linspace(0, num_total - 1, num_frames).round().astype(np.int64)
    if fps <= 0 or not video_fps or video_fps <= 0:
        raise ValueError(f"fps sampling needs fps > 0 and a known video fps (got {fps}, {video_fps})")
    step = video_fps / fps
    idx = np.unique(np.minimum(np.arange(0, num_total, step).round(), num_total - 1).astype(np.int64))
    if num_frames and len(idx) > num_frames:
        idx = idx[np.linspace(0, len(idx) - 1, num_frames).round().astype(np.int64)]
    return idx


def _frame_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise MediaError(f"{path}: frame folder holds no image files")
    return files


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class DecodedVideo:
    """Frames sampled from a video, and how they were decoded (so callers can report it).

    Attributes:
        frames: np.ndarray (T, H, W, 3) uint8, upright (the display rotation is applied).
        indices: source frame index of each returned frame, int64 (T,); repeats for short clips.
        num_total: frames in the source.
        fps: the source frame rate; None for frame folders and lists.
        decoder: "decord", "pyav", or "images" (a frame folder or list, read with PIL).
        rotation: degrees counter-clockwise applied to make the stored frames upright (0/90/180/270).
    """

    frames: np.ndarray
    indices: np.ndarray
    num_total: int
    fps: float | None
    decoder: str
    rotation: int = 0


@dataclass(frozen=True)
class _Header:
    """What PyAV reads from a video file before a decoder is chosen.

    Attributes:
        claimed: frames the container says the video has; None where it does not say.
        fps: average frame rate; None if unknown.
        rotation: degrees counter-clockwise that turn the stored frames upright (0/90/180/270).
        size: (height, width) of the stored frames.
    """

    claimed: int | None
    fps: float | None
    rotation: int
    size: tuple[int, int]


def _sample(where: str, total: int, num_frames: int, fps: float | None, video_fps: float | None) -> np.ndarray:
    """`sample_indices`, with its failures turned into MediaErrors that name the file."""
    if total == 0:
        raise MediaError(f"{where}: video has zero frames")
    if fps is not None and not (video_fps and video_fps > 0):
        raise MediaError(f"{where}: unknown frame rate, cannot sample at {fps} fps (use fps=None)")
    return sample_indices(total, num_frames, fps, video_fps)


def _load_frames(files: Sequence[str | Path], num_frames: int, fps: float | None, where: str) -> DecodedVideo:
    """A video given as image files (a frame folder): uniform sampling only, equal frame sizes."""
    if not files:
        raise MediaError(f"{where}: empty frame list")
    idx = _sample(where, len(files), num_frames, fps, None)  # image files carry no frame rate
    frames = [np.asarray(load_image(files[i])) for i in idx]
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise MediaError(f"{where}: frames have different sizes {sorted(sizes)}")
    return DecodedVideo(np.stack(frames), idx, len(files), None, "images")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _stream_fps(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _claimed_frames(container, stream) -> int | None:
    """Frames the container says the video has: the sample count (mp4, mov, avi), else duration x fps.
    Matroska and webm write the duration up front, so a cut file still claims its full length."""
    if stream.frames > 0:
        return stream.frames
    fps = _stream_fps(stream)
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE; may include a longer audio track
    else:
        return None  # raw streams (.h264) say nothing
    return round(seconds * fps) if fps else None


def _rotation(frame, stream) -> int:
    """Degrees counter-clockwise that turn `frame` upright: the display matrix (what phones write),
    else a legacy `rotate` tag (clockwise; ffmpeg < 5 exported it and remuxing kept it in matroska)."""
    degrees = float(frame.rotation)
    tags = {key.lower(): value for key, value in stream.metadata.items()}
    if not degrees and tags.get("rotate", "").lstrip("-").isdigit():
        degrees = -float(tags["rotate"])
    return round(degrees / 90) % 4 * 90  # flips and odd angles are not handled


def _read_header(path: Path) -> _Header:
    """Open the file with PyAV and decode its first frame: the only way PyAV exposes the rotation.
    This costs one frame (0.5 ms for 96x64 up to 25 ms for 1280x720), not a second decode."""
    import av  # lazy, like decord

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            claimed = _claimed_frames(container, stream)
            first = next(container.decode(stream), None)
            rotation = _rotation(first, stream) if first is not None else 0
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: unreadable or truncated video ({_first_line(exc)})") from exc
    if first is None:
        raise MediaError(f"{path}: truncated or corrupt video: the container promises {claimed} frames, none decode"
                         if claimed else f"{path}: video has zero frames")
    return _Header(claimed, _stream_fps(stream), rotation, (first.height, first.width))


def _check_complete(path: Path, total: int, claimed: int | None) -> None:
    """A video holding fewer frames than its container promises was cut short: fail, rather than
    sample the remainder (which repeats frames and drops the end without a word). A claim may
    exceed the frames by a little without damage (edit lists, duration rounding, a slightly longer
    audio track), so 2 frames or 5% are allowed."""
    if claimed and claimed - total > max(2, claimed // 20):
        raise MediaError(f"{path}: truncated video: the container promises {claimed} frames, the file holds {total}")


def _decode_with_decord(path: Path, header: _Header, num_frames: int, fps: float | None) -> DecodedVideo:
    """decord's random access (fast on healthy files). Raises on anything it cannot do right."""
    import decord  # lazy: importing decord costs ~0.3 s and only video paths need it

    # One decoding thread: data loaders already parallelise over workers (2-core CI machines).
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    _check_complete(path, total, header.claimed)
    idx = _sample(str(path), total, num_frames, fps, header.fps)  # header fps: same indices as PyAV
    frames = reader.get_batch(idx.tolist()).asnumpy()
    if frames.shape != (len(idx), *header.size, 3):
        # decord 0.6.0 mangles 16-, 48- and 72-px-wide frames (shared ENVIRONMENT notes §2a), and it
        # rotates a rotation it finds itself (mp4 with a legacy tag that PyAV's ffmpeg ignores).
        raise MediaError(f"{path}: decord returned frames of shape {frames.shape}")
    return DecodedVideo(frames, idx, total, header.fps, "decord")


def _pick_frames(container, idx: np.ndarray, rotation: int) -> list[np.ndarray]:
    """Decode in display order up to the last wanted frame, converting only the wanted ones to RGB
    (turned upright); a frame sampled twice (short clip) appears twice."""
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    repeats = np.bincount(idx)
    picked: list[np.ndarray] = []
    for i, frame in enumerate(container.decode(stream)):
        if repeats[i]:
            picked += [np.rot90(frame.to_ndarray(format="rgb24"), rotation // 90)] * int(repeats[i])
        if i == idx[-1]:
            break
    return picked


def _decode_with_pyav(path: Path, header: _Header, num_frames: int, fps: float | None) -> DecodedVideo:
    """PyAV: count the frames by demuxing (cheap: no decoding), so indices are sampled from the same
    total as decord's, then decode the wanted frames in one pass. Applies the display rotation."""
    import av

    try:
        with av.open(str(path)) as container:
            total = sum(1 for packet in container.demux(video=0) if packet.size)  # size 0: flush packet
        _check_complete(path, total, header.claimed)
        idx = _sample(str(path), total, num_frames, fps, header.fps)
        with av.open(str(path)) as container:
            picked = _pick_frames(container, idx, header.rotation)
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: corrupt video, decoding frames failed ({_first_line(exc)})") from exc
    if len(picked) < len(idx):
        raise MediaError(f"{path}: corrupt video: {total} frames in the file, frame {idx[len(picked)]} does not decode")
    return DecodedVideo(np.stack(picked), idx, total, header.fps, "pyav", header.rotation)


def load_video_info(path: str | Path | Sequence[str | Path], num_frames: int = 8,
                    fps: float | None = None) -> DecodedVideo:
    """Decode a video, sample frames, and say how: decord where it works, else PyAV, per file.

    PyAV reads the header first (frame count, frame rate, rotation). Rotated videos go to PyAV, which
    rotates them upright: decord honours mp4 rotation but not matroska's, and its rotated output
    meets its width bugs. Other files go to decord; if decord fails (AV1, odd widths, fewer frames
    than it should find), PyAV decodes the file and either returns the frames or gives the reason.
    Both decoders sample the same indices and give the same pixels (tests/test_media.py).

    A short but complete video gives `num_frames` frames with repeats (uniform sampling); a video
    holding fewer frames than its container promises is truncated and raises.

    Args:
        path: a video file, a folder of frame images, or a list of frame image files.
        num_frames: frames to return (uniform sampling), or the cap in fps mode.
        fps: sample at this many frames per second instead of uniformly (see `sample_indices`).

    Returns:
        DecodedVideo: the frames, their source indices, and the decoder that produced them.

    Raises:
        MediaError: missing, unreadable, truncated or zero-frame video (the message names the file).
    """
    if isinstance(path, (list, tuple)):
        return _load_frames(list(path), num_frames, fps, f"frame list starting {path[0] if path else '[]'}")
    path = Path(path)
    if path.is_dir():
        return _load_frames(_frame_files(path), num_frames, fps, str(path))
    if not path.is_file():
        raise MediaError(f"{path}: missing video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty video file (0 bytes)")
    header = _read_header(path)
    if header.rotation:
        return _decode_with_pyav(path, header, num_frames, fps)
    try:
        return _decode_with_decord(path, header, num_frames, fps)
    except Exception as exc:  # DECORDError, RuntimeError, or frames we reject: PyAV decides
        log.debug("%s: decord failed (%s); decoding with PyAV", path, _first_line(exc))
    return _decode_with_pyav(path, header, num_frames, fps)


def load_video(path: str | Path | Sequence[str | Path], num_frames: int = 8,
               fps: float | None = None) -> np.ndarray:
    """Decode a video and sample frames: `load_video_info(...).frames`.

    Args:
        path: a video file, a folder of frame images, or a list of frame image files.
        num_frames: frames to return (uniform sampling), or the cap in fps mode.
        fps: sample at this many frames per second instead of uniformly (see `sample_indices`).

    Returns:
        np.ndarray (T, H, W, 3) uint8, upright.

    Raises:
        MediaError: missing, unreadable, truncated or zero-frame video (the message names the file).
    """
    return load_video_info(path, num_frames, fps).frames


def load_media(root: str | Path, rels: str | Sequence[str], media_type: str,
               num_frames: int = 8) -> Image.Image | np.ndarray | list[Image.Image]:
    """Load a record's media from under `root`: one image or video, or a list of images for several.

    A record with one path gives the item itself (what every single-media caller expects); several images give a
    list in the record's order (the prompt's `<image>` markers, or all images before the text, place them:
    `mmpo.models.prompt_text`). Several videos in one record are refused.

    Args:
        root: media root folder.
        rels: path(s) relative to `root` (as in `PairRecord.media`).
        media_type: "image" or "video".
        num_frames: frames to sample for videos.

    Returns:
        RGB PIL image, (T, H, W, 3) uint8 video, or a list of RGB PIL images.

    Raises:
        MediaError: a path escapes `root`, or the file is missing or unreadable.
        ValueError: unknown media_type, or several videos.
    """
    rels = [rels] if isinstance(rels, str) else list(rels)
    if not rels:
        raise MediaError(f"{root}: no media paths given")
    if len(rels) > 1:
        if media_type != "image":
            raise ValueError(f"{len(rels)} {media_type}s in one record: several media per record are images only")
        return [load_media(root, rel, media_type, num_frames) for rel in rels]
    try:
        path = resolve_media(root, rels[0])
    except ValueError as exc:
        raise MediaError(f"{rels[0]}: {exc}") from None
    if media_type == "image":
        return load_image(path)
    if media_type == "video":
        return load_video(path, num_frames)
    raise ValueError(f"unknown media_type {media_type!r} (valid: 'image', 'video')")


# -- augmentation helpers ------------------------------------------------------------------------

def _per_frame(fn: Callable) -> Callable:
    """Let an op written for (T,H,W,3) arrays take a PIL image too (as a one-frame video), so images
    and videos share one code path."""
    def wrapped(media, rng: np.random.Generator, **params):
        if isinstance(media, Image.Image):
            return Image.fromarray(fn(np.asarray(media.convert("RGB"))[None], rng, **params)[0])
        return fn(media, rng, **params)

    wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapped


def _resize_frames(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize every frame to (h, w) with PIL bilinear."""
    if frames.shape[1:3] == (h, w):
        return frames.copy()
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames])


def _crop_resize(frames: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop box (top, left, height, width) from every frame and resize back to the frame size."""
    top, left, ch, cw = box
    _, h, w, _ = frames.shape
    return _resize_frames(np.ascontiguousarray(frames[:, top:top + ch, left:left + cw]), h, w)


def _rrc_box(h: int, w: int, rng: np.random.Generator, scale: Sequence[float],
             ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop box sampler, ported from torchvision `RandomResizedCrop.get_params`:
    10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)), else a centre crop."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    cw, ch = w, h  # torchvision's fallback: the whole image clipped to the ratio range, centred
    if w / h < ratio[0]:
        ch = int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        cw = int(round(h * ratio[1]))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _check_video(video: np.ndarray, op: str) -> np.ndarray:
    if not isinstance(video, np.ndarray) or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{op}: expected a video array (T,H,W,3), got {type(video).__name__}"
                         f"{getattr(video, 'shape', '')}")
    return video


# -- temporal ops (videos only) ------------------------------------------------------------------

def frame_shuffle(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random permutation of the frames (PaMi-VDPO pool, docs/METHODS.md §1); never the identity if T > 1.

    Returns:
        New (T, H, W, 3) uint8 video; the input is not modified.
    """
    t = len(_check_video(video, "frame_shuffle"))
    order = rng.permutation(t)
    if t > 1 and np.array_equal(order, np.arange(t)):
        order = np.roll(order, 1)  # an identity shuffle would be a false rejection
    return video[order]


def temporal_reverse(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Play the clip backwards (PaMi-VDPO pool, docs/METHODS.md §1). Deterministic; `rng` is unused.

    Returns:
        New (T, H, W, 3) uint8 video; the input is not modified.
    """
    return _check_video(video, "temporal_reverse")[::-1].copy()


def frame_drop(video: np.ndarray, rng: np.random.Generator, drop: float = 0.5) -> np.ndarray:
    """Drop a fraction of frames and fill each gap with the previous kept frame, keeping T.

    Args:
        drop: fraction of frames to drop (at least one, at most T - 1).

    Returns:
        New (T, H, W, 3) uint8 video; the input is not modified.
    """
    t = len(_check_video(video, "frame_drop"))
    if t < 2:
        return video.copy()
    k = int(min(t - 1, max(1, round(drop * t))))
    keep = np.ones(t, dtype=bool)
    keep[rng.choice(t, size=k, replace=False)] = False
    # Source of frame i = last kept index <= i (forward fill); before the first kept one, use it.
    src = np.maximum.accumulate(np.where(keep, np.arange(t), -1))
    src[src < 0] = int(np.argmax(keep))
    return video[src]


def segment_swap(video: np.ndarray, rng: np.random.Generator, segments: int = 4) -> np.ndarray:
    """Split the clip into `segments` temporal chunks and swap two of them (docs/METHODS.md §1, reconstruction).

    Args:
        segments: number of chunks (capped at T).

    Returns:
        New (T, H, W, 3) uint8 video; the input is not modified.
    """
    t = len(_check_video(video, "segment_swap"))
    n = min(int(segments), t)
    if n < 2:
        return video.copy()
    chunks = np.array_split(np.arange(t), n)
    i, j = rng.choice(n, size=2, replace=False)
    chunks[i], chunks[j] = chunks[j], chunks[i]
    return video[np.concatenate(chunks)]


def freeze(video: np.ndarray, rng: np.random.Generator, span: float = 0.5) -> np.ndarray:
    """Repeat one frame over a span of the clip (a stalled stream), keeping T.

    Args:
        span: fraction of the clip to freeze (at least two frames).

    Returns:
        New (T, H, W, 3) uint8 video; the input is not modified.
    """
    t = len(_check_video(video, "freeze"))
    length = int(min(t, max(2, round(span * t))))
    if t < 2:
        return video.copy()
    start = int(rng.integers(0, t - length + 1))
    out = video.copy()
    out[start:start + length] = video[start]
    return out


# -- spatial / photometric ops (images and videos, one code path) --------------------------------

def spatial_crop(frames: np.ndarray, rng: np.random.Generator, scale: float = 0.5) -> np.ndarray:
    """Random crop keeping `scale` of the area (same aspect ratio, same box in every frame), resized back.

    Args:
        scale: kept area fraction in (0, 1].

    Returns:
        New (T, H, W, 3) uint8 frames (a PIL image in, a PIL image out via `AUGMENTATIONS`).
    """
    _, h, w, _ = frames.shape
    side = math.sqrt(min(max(float(scale), 1e-4), 1.0))
    ch, cw = max(1, int(round(h * side))), max(1, int(round(w * side)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return _crop_resize(frames, (top, left, ch, cw))


def mdpo_crop(frames: np.ndarray, rng: np.random.Generator, scale: Sequence[float] = (0.01, 0.2),
              ratio: Sequence[float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """mDPO's image corruption: `RandomResizedCrop(scale=(0.01, 0.2))` back to full size, i.e. keep
    1-20% of the image (luka-group/mDPO `mdpo_trainer.py`; docs/METHODS.md §6.6).

    Args:
        scale: range of the kept area fraction.
        ratio: range of the crop aspect ratio (torchvision's default).

    Returns:
        New (T, H, W, 3) uint8 frames (a PIL image in, a PIL image out via `AUGMENTATIONS`).
    """
    _, h, w, _ = frames.shape
    return _crop_resize(frames, _rrc_box(h, w, rng, scale, ratio))


def gaussian_noise(frames: np.ndarray, rng: np.random.Generator, std: float = 25.0) -> np.ndarray:
    """Add i.i.d. Gaussian pixel noise.

    Args:
        std: noise standard deviation in grey levels (0..255 scale).

    Returns:
        New (T, H, W, 3) uint8 frames (a PIL image in, a PIL image out via `AUGMENTATIONS`).
    """
    noise = rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(std)
    return np.clip(frames.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)


def gaussian_blur(frames: np.ndarray, rng: np.random.Generator, radius: float = 2.0) -> np.ndarray:
    """Gaussian blur of every frame (PIL `GaussianBlur`). Deterministic; `rng` is unused.

    Args:
        radius: blur standard deviation in pixels.

    Returns:
        New (T, H, W, 3) uint8 frames (a PIL image in, a PIL image out via `AUGMENTATIONS`).
    """
    blur = ImageFilter.GaussianBlur(radius=float(radius))
    return np.stack([np.asarray(Image.fromarray(f).filter(blur)) for f in frames])


def _grey(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as in torchvision `rgb_to_grayscale` (keeps a trailing channel axis)."""
    return (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def color_jitter(frames: np.ndarray, rng: np.random.Generator, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4) -> np.ndarray:
    """Brightness, contrast and saturation jitter with factors ~ U(1 - s, 1 + s), the torchvision
    `ColorJitter` rule, applied in that fixed order with the same factors on every frame (so a video
    flickers no more than the source). Each blend follows torchvision's `adjust_*` functions.

    Args:
        brightness: brightness strength (0 = off).
        contrast: contrast strength (0 = off).
        saturation: saturation strength (0 = off).

    Returns:
        New (T, H, W, 3) uint8 frames (a PIL image in, a PIL image out via `AUGMENTATIONS`).
    """
    b, c, s = (rng.uniform(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation))
    x = frames.astype(np.float32) * np.float32(b)
    x = np.clip(x, 0, 255)
    # Contrast blends towards the mean grey level of each frame (torchvision adjust_contrast).
    mean = _grey(x).mean(axis=(1, 2, 3), keepdims=True)
    x = np.clip(mean + np.float32(c) * (x - mean), 0, 255)
    g = _grey(x)
    x = np.clip(g + np.float32(s) * (x - g), 0, 255)
    return x.round().astype(np.uint8)


def region_mask(frames: np.ndarray, rng: np.random.Generator, box: Sequence[float] | None = None,
                scale: float = 0.25, fill: str = "grey") -> np.ndarray:
    """Fill a box with grey (128) or the mean colour, in every frame.

    The box can be given exactly (`[x0, y0, x1, y1]` in pixels, x1/y1 exclusive), so the demo can
    erase one known object (the counterfactual re-render of DEMO-NOTES.md); otherwise a random box
    covering `scale` of the area with the frame's aspect ratio.

    Args:
        box: explicit [x0, y0, x1, y1] or None for a random box.
        scale: area fraction of the random box.
        fill: "grey" or "mean" (per-frame mean colour, so no new colour enters the scene).

    Returns:
        New (T, H, W, 3) uint8 frames (a PIL image in, a PIL image out via `AUGMENTATIONS`).
    """
    _, h, w, _ = frames.shape
    if box is None:
        side = math.sqrt(min(max(float(scale), 1e-4), 1.0))
        bh, bw = max(1, int(round(h * side))), max(1, int(round(w * side)))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        x1, y1 = x0 + bw, y0 + bh
    else:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
        y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    out = frames.copy()
    if fill == "grey":
        out[:, y0:y1, x0:x1] = 128
    elif fill == "mean":
        out[:, y0:y1, x0:x1] = frames.mean(axis=(1, 2), keepdims=True).round().astype(np.uint8)
    else:
        raise ValueError(f"region_mask: fill must be 'grey' or 'mean', got {fill!r}")
    return out


# -- registry ------------------------------------------------------------------------------------

AUGMENTATIONS: dict[str, Callable] = {
    "frame_shuffle": frame_shuffle, "temporal_reverse": temporal_reverse, "frame_drop": frame_drop,
    "segment_swap": segment_swap, "freeze": freeze,
    "spatial_crop": _per_frame(spatial_crop), "mdpo_crop": _per_frame(mdpo_crop),
    "gaussian_noise": _per_frame(gaussian_noise), "gaussian_blur": _per_frame(gaussian_blur),
    "color_jitter": _per_frame(color_jitter), "region_mask": _per_frame(region_mask),
}
_PER_FRAME_OPS = ("spatial_crop", "gaussian_noise", "gaussian_blur", "color_jitter", "region_mask")
VIDEO_OPS: tuple[str, ...] = ("frame_shuffle", "temporal_reverse", "frame_drop", "segment_swap",
                              "freeze") + _PER_FRAME_OPS
IMAGE_OPS: tuple[str, ...] = ("mdpo_crop",) + _PER_FRAME_OPS


def _check_params(op: str, params: dict) -> None:
    """Unknown parameter names fail loudly with the valid ones (a typo would otherwise be a TypeError)."""
    fn = inspect.unwrap(AUGMENTATIONS[op])
    valid = [p for p in inspect.signature(fn).parameters if p not in ("video", "frames", "rng")]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"augmentation {op!r}: unknown params {unknown} (valid: {valid})")


def augment(media: Image.Image | np.ndarray, spec: AugSpec) -> Image.Image | np.ndarray:
    """Apply one augmentation deterministically: the same spec always gives the same output.

    Args:
        media: RGB PIL image or (T, H, W, 3) uint8 video; never modified.
        spec: op name, params and seed (`mmpo.records.AugSpec`).

    Returns:
        New media of the same kind, size and (for videos) number of frames.

    Raises:
        ValueError: unknown op or params, or an op that does not apply to this kind of media.
    """
    if spec.op not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {spec.op!r} (valid: {sorted(AUGMENTATIONS)})")
    is_image = isinstance(media, Image.Image)
    allowed = IMAGE_OPS if is_image else VIDEO_OPS
    if spec.op not in allowed:
        kind = "images" if is_image else "videos"
        raise ValueError(f"augmentation {spec.op!r} does not apply to {kind} (valid: {list(allowed)})")
    if not is_image:
        _check_video(media, spec.op)
        if media.dtype != np.uint8 or len(media) == 0:
            raise ValueError(f"{spec.op}: expected a non-empty uint8 video, got {media.dtype} {media.shape}")
    _check_params(spec.op, spec.params)
    rng = np.random.default_rng(spec.seed)
    return AUGMENTATIONS[spec.op](media, rng, **spec.params)
