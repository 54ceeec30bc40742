"""Write real, small test clips with PyAV (libx264), so tests decode them with decord like real data.

Used by tests and by other engineers' fixtures (pytest puts tests/ on sys.path, like `helpers`):

    from videos import make_frames, write_clip
    frames = make_frames(T=8, H=64, W=64, seed=0)      # (T,H,W,3) uint8 with visible moving content
    write_clip(tmp_path / "clip.mp4", frames, fps=8)

Width must be >= 64: decord 0.6.0 mangles 16- and 48-px-wide frames (shared ENVIRONMENT notes §2a).
H.264 with yuv420p needs even sizes; frames are compressed lossily, so compare decoded pixels
approximately (mean absolute difference of a few grey levels with the defaults here).
"""

from __future__ import annotations

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


def write_clip(path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 10) -> Path:
    """Encode frames as an H.264 mp4 (yuv420p) with PyAV.

    Args:
        path: output file (.mp4).
        frames: np.ndarray (T, H, W, 3) uint8; H and W even, W >= 64.
        fps: frame rate written in the container.
        crf: x264 quality (lower = closer to the input; 10 keeps test comparisons tight).

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
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return path
