"""Write real, small test clips with PyAV (h264 by default), so tests decode them like real data.

Used by tests and by other engineers' fixtures (pytest puts tests/ on sys.path, like `helpers`):

    from videos import make_frames, write_clip
    frames = make_frames(T=8, H=64, W=64, seed=0)      # (T,H,W,3) uint8 with visible moving content
    write_clip(tmp_path / "clip.mp4", frames, fps=8)

Width must be >= 64: decord 0.6.0 mangles 16-, 48- and 72-px-wide frames (shared ENVIRONMENT notes §2a;
72 measured here). `write_clip` also writes other codecs (`ENCODERS`), display rotations, and
`truncate_clip` cuts a clip as an interrupted download would.
H.264 with yuv420p needs even sizes; frames are compressed lossily, so compare decoded pixels
approximately (mean absolute difference of a few grey levels with the defaults here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def make_frames(T: int = 8, H: int = 64, W: int = 64, seed: int = 0) -> np.ndarray:
    """Frames with a coloured square moving left to right over a smooth per-seed background.

    Every frame differs from its neighbours (the square moves and its colour shifts), so temporal
    augmentations (shuffle, reverse, drop) visibly change the clip.

    Args:
        T: number of frames.
        H: height in pixels (even; >= 32 recommended).
        W: width in pixels (>= 64 for decord, even).
        seed: picks background and square colours.

    Returns:
        np.ndarray (T, H, W, 3) uint8.
    """
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 120, size=3)
    # Smooth vertical gradient: compresses well, so decoded pixels stay close to the originals.
    ramp = np.linspace(0.0, 60.0, H)[:, None, None]
    base = np.clip(bg[None, None, :] + ramp, 0, 255)
    frames = np.broadcast_to(base, (T, H, W, 3)).astype(np.uint8).copy()
    colour = rng.integers(150, 256, size=3)
    side = max(8, min(H, W) // 4)
    for t in range(T):
        x0 = int(round((W - side) * t / max(T - 1, 1)))
        y0 = (H - side) // 2
        frames[t, y0:y0 + side, x0:x0 + side] = (colour + 10 * t) % 256
    return frames


# Codec name -> (PyAV encoder, pixel format, options). The options keep decoded pixels within a few
# grey levels of the input, so tests can compare frames to the originals.
ENCODERS = {
    "h264": ("libx264", "yuv420p", {"crf": "10"}),
    "hevc": ("libx265", "yuv420p", {"crf": "10", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"crf": "10", "b": "0"}),
    "mpeg4": ("mpeg4", "yuv420p", {"qmin": "1", "qmax": "3"}),
    "mjpeg": ("mjpeg", "yuvj420p", {"qmin": "1", "qmax": "3"}),
    "av1": ("libsvtav1", "yuv420p", {"crf": "10"}),   # the only AV1 encoder in PyAV 18's wheel
}


def can_encode(codec: str) -> bool:
    """Whether this PyAV build has the encoder `write_clip` uses for `codec` (wheels differ)."""
    import av

    return ENCODERS[codec][0] in av.codecs_available


def write_clip(path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 10, codec: str = "h264",
               rotation: int = 0, rotate_tag: int | None = None) -> Path:
    """Encode frames with PyAV; the container follows the file suffix (.mp4, .mkv, .webm, .avi).

    Args:
        path: output file.
        frames: np.ndarray (T, H, W, 3) uint8; H and W even, W >= 64.
        fps: frame rate written in the container.
        crf: quality for h264/hevc/vp9/av1 (lower = closer to the input; 10 keeps comparisons tight).
        codec: a key of `ENCODERS`.
        rotation: display rotation in degrees counter-clockwise, stored as the stream's display matrix
            (what phones write): a player shows `np.rot90(frame, rotation // 90)`.
        rotate_tag: write a legacy `rotate` metadata tag instead (degrees clockwise, as old ffmpeg
            exported it; matroska keeps it as a plain tag).

    Returns:
        The output path.
    """
    import av  # lazy: only tests and demo fixtures write videos

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
    _, h, w, _ = frames.shape
    if w < 64 or h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h}: need even sizes and width >= 64 (decord bug)")
    encoder, pix_fmt, options = ENCODERS[codec]
    if encoder.startswith("libvpx") and "decord" in sys.modules:
        return _write_in_fresh_python(path, frames, fps=fps, crf=crf, codec=codec, rotation=rotation,
                                      rotate_tag=rotate_tag)
    if "crf" in options:
        options = {**options, "crf": str(crf)}
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = options
        if rotation:
            stream.set_display_rotation(rotation)  # PyAV >= 18
        if rotate_tag is not None:
            stream.metadata["rotate"] = str(rotate_tag)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return path


def _write_in_fresh_python(path: str | Path, frames: np.ndarray, **kwargs) -> Path:
    """`write_clip` in a new interpreter. decord loads its own libvpx with RTLD_GLOBAL, and PyAV's
    libvpx encoders then bind to it and fail to open (avcodec_open2 returns EINVAL, measured with
    decord 0.6.0 and PyAV 18.1). Decoding is unaffected: ffmpeg decodes VP9 with its own decoder."""
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "frames.npy", frames)
        script = ("import json, sys; import numpy as np; sys.path.insert(0, sys.argv[1]); import videos; "
                  "videos.write_clip(sys.argv[2], np.load(sys.argv[3]), **json.loads(sys.argv[4]))")
        subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(path),
                        str(Path(tmp) / "frames.npy"), json.dumps(kwargs)], check=True, capture_output=True)
    return Path(path)


def truncate_clip(path: str | Path, out: str | Path, keep: int) -> Path:
    """Copy a clip cut off where its packet number `keep` starts, as an interrupted download would be.

    The header still describes the whole clip (matroska writes its duration up front), but only the
    first `keep` frames are in the file.

    Args:
        path: a clip written by `write_clip` (.mkv or .webm; an mp4 keeps its index at the end).
        out: output file.
        keep: frames to keep (packets in decode order; < the clip's frame count).

    Returns:
        The output path.
    """
    import av

    with av.open(str(path)) as container:
        starts = [packet.pos for packet in container.demux(video=0) if packet.size]
    out = Path(out)
    out.write_bytes(Path(path).read_bytes()[: starts[keep]])
    return out
