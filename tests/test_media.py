"""mmpo.media: image/video decoding, frame sampling, and the seeded augmentation ops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from videos import make_frames, write_clip

from mmpo.media import (
    AUGMENTATIONS,
    IMAGE_OPS,
    VIDEO_OPS,
    MediaError,
    _rrc_box,
    augment,
    load_image,
    load_media,
    load_video,
    sample_indices,
)
from mmpo.records import AugSpec

# Ops that ignore their rng; every other op must depend on the seed.
DETERMINISTIC_OPS = {"temporal_reverse", "gaussian_blur"}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return make_frames(T=8, H=64, W=64, seed=0)


@pytest.fixture(scope="module")
def image(frames) -> Image.Image:
    return Image.fromarray(frames[3])


@pytest.fixture
def clip_file(tmp_path, frames):
    return write_clip(tmp_path / "clip.mp4", frames, fps=8)


def _nearest(decoded: np.ndarray, originals: np.ndarray) -> list[int]:
    """Index of the closest original frame for each decoded frame (mean absolute difference)."""
    d = np.abs(decoded[:, None].astype(np.int16) - originals[None].astype(np.int16)).mean(axis=(2, 3, 4))
    return d.argmin(axis=1).tolist()


# -- augmentations: generic properties of every op -----------------------------------------------

@pytest.mark.parametrize("op", VIDEO_OPS)
def test_video_op_contract(op, frames):
    video = frames.copy()
    video.flags.writeable = False  # an in-place write anywhere in the op raises
    out = augment(video, AugSpec(op, seed=3))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.array_equal(video, frames), "input mutated"
    assert not np.array_equal(out, frames), "op left the clip unchanged"
    assert np.array_equal(out, augment(video, AugSpec(op, seed=3))), "same spec, different output"
    if op not in DETERMINISTIC_OPS:
        outs = [augment(video, AugSpec(op, seed=s)) for s in range(5)]
        assert any(not np.array_equal(outs[0], o) for o in outs[1:]), "seed has no effect"


@pytest.mark.parametrize("op", IMAGE_OPS)
def test_image_op_contract(op, image):
    before = np.asarray(image).copy()
    out = augment(image, AugSpec(op, seed=3))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == image.size
    assert np.array_equal(np.asarray(image), before), "input mutated"
    assert not np.array_equal(np.asarray(out), before), "op left the image unchanged"
    assert np.array_equal(np.asarray(out), np.asarray(augment(image, AugSpec(op, seed=3))))
    if op not in DETERMINISTIC_OPS:
        outs = [np.asarray(augment(image, AugSpec(op, seed=s))) for s in range(5)]
        assert any(not np.array_equal(outs[0], o) for o in outs[1:]), "seed has no effect"


def test_registry_lists_every_op_once():
    assert set(VIDEO_OPS) | set(IMAGE_OPS) == set(AUGMENTATIONS)
    assert len(set(VIDEO_OPS)) == len(VIDEO_OPS) and len(set(IMAGE_OPS)) == len(IMAGE_OPS)


def test_augment_errors(frames, image):
    with pytest.raises(ValueError, match="frame_shuffle") as exc:
        augment(frames, AugSpec("no_such_op"))
    assert "no_such_op" in str(exc.value)
    with pytest.raises(ValueError, match="does not apply to images"):
        augment(image, AugSpec("frame_shuffle"))
    with pytest.raises(ValueError, match="does not apply to videos"):
        augment(frames, AugSpec("mdpo_crop"))
    with pytest.raises(ValueError, match=r"unknown params \['stdev'\].*'std'"):
        augment(frames, AugSpec("gaussian_noise", {"stdev": 3}))


# -- augmentations: what each op does ------------------------------------------------------------

def test_temporal_ops_reorder_frames(frames):
    assert np.array_equal(augment(frames, AugSpec("temporal_reverse")), frames[::-1])
    for op in ("frame_shuffle", "segment_swap"):
        out = augment(frames, AugSpec(op, seed=1))
        order = _nearest(out, frames)
        assert sorted(order) == list(range(8)) and order != list(range(8)), op
        assert np.array_equal(out, frames[order])


def test_frame_drop_repeats_kept_frames(frames):
    out = augment(frames, AugSpec("frame_drop", {"drop": 0.25}, seed=0))
    src = _nearest(out, frames)
    assert np.array_equal(out, frames[src])
    assert len(set(src)) == 6                      # 2 of 8 frames dropped
    assert src == sorted(src)                       # order kept; gaps filled by neighbours


def test_freeze_repeats_one_frame_over_the_span(frames):
    out = augment(frames, AugSpec("freeze", {"span": 0.5}, seed=2))
    src = _nearest(out, frames)
    frozen = [t for t in range(8) if src[t] != t]
    assert len(frozen) == 3                          # span of 4 frames = first kept + 3 repeats
    assert len({src[t] for t in frozen}) == 1 and src[frozen[0]] == frozen[0] - 1


def test_region_mask_explicit_box(frames, image):
    out = augment(frames, AugSpec("region_mask", {"box": [10, 20, 30, 40]}))
    assert (out[:, 20:40, 10:30] == 128).all()
    outside = np.ones(frames.shape[:3], bool)
    outside[:, 20:40, 10:30] = False
    assert np.array_equal(out[outside], frames[outside])
    mean = np.asarray(augment(image, AugSpec("region_mask", {"box": [0, 0, 8, 8], "fill": "mean"})))
    assert np.array_equal(mean[0, 0], np.asarray(image).mean(axis=(0, 1)).round().astype(np.uint8))


def test_identity_settings_leave_media_unchanged(frames):
    assert np.array_equal(augment(frames, AugSpec("spatial_crop", {"scale": 1.0})), frames)
    jitter = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    assert np.abs(augment(frames, AugSpec("color_jitter", jitter)).astype(int) - frames).max() <= 1


def test_gaussian_noise_has_the_requested_std():
    grey = np.full((2, 64, 64, 3), 128, np.uint8)   # mid-grey: no clipping
    diff = augment(grey, AugSpec("gaussian_noise", {"std": 10.0}, seed=0)).astype(float) - 128
    assert abs(diff.std() - 10.0) < 0.5 and abs(diff.mean()) < 0.5


def test_mdpo_crop_keeps_1_to_20_percent_of_the_area():
    """torchvision RandomResizedCrop(scale=(0.01, 0.2)) box, as in luka-group/mDPO."""
    for seed in range(200):
        top, left, ch, cw = _rrc_box(64, 96, np.random.default_rng(seed), (0.01, 0.2), (3 / 4, 4 / 3))
        assert 0 <= top <= 64 - ch and 0 <= left <= 96 - cw
        assert 0.005 <= ch * cw / (64 * 96) <= 0.22   # rounding of a few-pixel box


def test_per_frame_ops_match_between_image_and_one_frame_video(image):
    one = np.asarray(image)[None]
    for op in ("spatial_crop", "gaussian_noise", "color_jitter", "region_mask", "gaussian_blur"):
        spec = AugSpec(op, seed=5)
        assert np.array_equal(np.asarray(augment(image, spec)), augment(one, spec)[0]), op


# -- images --------------------------------------------------------------------------------------

def test_load_image_mode_conversions(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 255, 0))          # fully transparent -> white
    rgba.save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((2, 2))
    assert r > 200 and g < 50 and b < 50                # CMYK (0,1,1,0) is red

    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    assert load_image(tmp_path / "l.png").getpixel((0, 0)) == (77, 77, 77)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (10, 200, 30)

    Image.new("LA", (4, 4), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 4, 4))              # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6                                    # orientation 6: display rotated 90 degrees clockwise
    img.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert out.getpixel((18, 1))[0] > 200 and out.getpixel((1, 1))[0] < 50   # top-left -> top-right


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(MediaError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="junk.png"):
        load_image(tmp_path / "junk.png")


# -- videos --------------------------------------------------------------------------------------

def test_sample_indices():
    assert sample_indices(8, 4).tolist() == [0, 2, 5, 7]
    assert sample_indices(3, 5).tolist() == [0, 0, 1, 2, 2]          # short clip: frames repeat
    assert sample_indices(16, 8, fps=2, video_fps=8).tolist() == [0, 4, 8, 12]
    assert sample_indices(64, 4, fps=8, video_fps=8).tolist() == [0, 21, 42, 63]   # capped, uniform
    with pytest.raises(ValueError):
        sample_indices(8, 4, fps=2, video_fps=None)


def test_load_video_decodes_a_written_clip(clip_file, frames):
    out = load_video(clip_file, num_frames=8)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - frames).mean() < 4    # H.264 at crf 10: a few grey levels
    assert _nearest(out, frames) == list(range(8))


def test_load_video_uniform_and_fps_sampling(tmp_path):
    frames = make_frames(T=16, H=64, W=96, seed=1)
    path = write_clip(tmp_path / "c16.mp4", frames, fps=8)
    assert _nearest(load_video(path, num_frames=4), frames) == [0, 5, 10, 15]
    assert _nearest(load_video(path, num_frames=8, fps=2), frames) == [0, 4, 8, 12]   # 2 s at 8 fps
    assert _nearest(load_video(path, num_frames=3, fps=4), frames) == [0, 8, 14]       # 8 sampled, cap 3


def test_load_video_from_frame_folder(tmp_path, frames):
    for t, f in enumerate(frames[:5]):
        Image.fromarray(f).save(tmp_path / f"{t:03d}.png")
    assert np.array_equal(load_video(tmp_path, num_frames=3), frames[[0, 2, 4]])
    files = sorted(tmp_path.glob("*.png"))
    assert np.array_equal(load_video(files, num_frames=5), frames[:5])


def test_broken_videos_raise_media_error_naming_the_file(tmp_path, clip_file):
    data = clip_file.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_bytes(b"hello" * 100)
    for name in ("half.mp4", "empty.mp4", "text.mp4", "missing.mp4"):
        with pytest.raises(MediaError, match=name):
            load_video(tmp_path / name)


def test_load_media_resolves_under_root(tmp_path, clip_file, image):
    image.save(tmp_path / "img.png")
    assert np.array_equal(np.asarray(load_media(tmp_path, ["img.png"], "image")), np.asarray(image))
    assert load_media(tmp_path, "clip.mp4", "video", num_frames=4).shape == (4, 64, 64, 3)
    (tmp_path / "root").mkdir()
    for rel in ("../img.png", str(tmp_path / "img.png")):
        with pytest.raises(MediaError, match="escapes the media root"):
            load_media(tmp_path / "root", [rel], "image")
    with pytest.raises(ValueError, match="media_type"):
        load_media(tmp_path, ["img.png"], "audio")


class _FakeReader:
    """Stands in for decord.VideoReader: a header with `n` frames that cannot be decoded."""

    def __init__(self, n: int, fps: float = 8.0):
        self.n, self.fps = n, fps

    def __len__(self):
        return self.n

    def get_avg_fps(self):
        return self.fps

    def get_batch(self, idx):
        raise RuntimeError("Check failed: frame decode error\nmore detail")


@pytest.mark.parametrize("reader, message", [
    (_FakeReader(0), "zero frames"),
    (_FakeReader(8), "decoding frames failed"),
])
def test_zero_frame_and_undecodable_videos(monkeypatch, clip_file, reader, message):
    import decord

    monkeypatch.setattr(decord, "VideoReader", lambda *a, **k: reader)
    with pytest.raises(MediaError, match=rf"clip\.mp4: .*{message}"):
        load_video(clip_file, num_frames=4)


def test_fps_sampling_needs_a_frame_rate(monkeypatch, clip_file):
    import decord

    monkeypatch.setattr(decord, "VideoReader", lambda *a, **k: _FakeReader(8, fps=0.0))
    with pytest.raises(MediaError, match="unknown frame rate"):
        load_video(clip_file, fps=2)
