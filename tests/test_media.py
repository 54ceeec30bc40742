"""mmpo.media: image/video decoding, frame sampling, and the seeded augmentation ops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from videos import can_encode, make_frames, truncate_clip, write_clip

from mmpo.media import (
    AUGMENTATIONS,
    IMAGE_OPS,
    VIDEO_OPS,
    MediaError,
    _decode_with_decord,
    _decode_with_pyav,
    _read_header,
    _rrc_box,
    augment,
    load_image,
    load_media,
    load_video,
    load_video_info,
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


def _write_no_video_stream(path):
    """An mp4 whose video stream never got a frame: ffmpeg then finds no video stream at all."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def _zero_packets_from(path, out, first):
    """Copy a clip with the payload of every packet from number `first` (decode order) zeroed."""
    import av

    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    for pos, size in spans[first:]:
        data[pos:pos + size] = bytes(size)
    out.write_bytes(bytes(data))
    return out


def test_unusable_videos_raise_media_error_naming_the_file(tmp_path, clip_file):
    with pytest.raises(MediaError, match=r"novideo\.mp4: no video stream"):
        load_video(_write_no_video_stream(tmp_path / "novideo.mp4"))
    full = write_clip(tmp_path / "full.mkv", make_frames(T=16, H=64, W=96))
    with pytest.raises(MediaError, match=r"cut0\.mkv: truncated or corrupt video: .* 16 frames, none decode"):
        load_video(truncate_clip(full, tmp_path / "cut0.mkv", keep=0))
    # Frames 4.. are garbage: decord fails, and PyAV, which decodes what decord could not, fails too.
    with pytest.raises(MediaError, match=r"bad\.mp4: corrupt video, decoding frames failed"):
        load_video(_zero_packets_from(clip_file, tmp_path / "bad.mp4", first=4))


def test_fps_sampling_needs_a_frame_rate(tmp_path, frames):
    for t, f in enumerate(frames[:4]):
        Image.fromarray(f).save(tmp_path / f"{t:03d}.png")
    with pytest.raises(MediaError, match="unknown frame rate"):
        load_video(tmp_path, fps=2)   # image files carry no frame rate


def test_load_video_info_reports_the_decoder(tmp_path, clip_file, frames):
    """A healthy clip is decoded by decord alone (PyAV reads only its header and first frame)."""
    info = load_video_info(clip_file, num_frames=4)
    assert info.decoder == "decord" and info.rotation == 0
    assert info.indices.tolist() == [0, 2, 5, 7] and info.num_total == 8 and info.fps == 8.0
    assert np.array_equal(info.frames, load_video(clip_file, num_frames=4))
    Image.fromarray(frames[0]).save(tmp_path / "0.png")
    one_image = load_video_info([tmp_path / "0.png"], num_frames=2)
    assert one_image.decoder == "images" and one_image.indices.tolist() == [0, 0] and one_image.fps is None


@pytest.mark.parametrize("suffix", [".mp4", ".h264"])
def test_files_decord_cannot_read_fall_back_to_pyav(tmp_path, suffix):
    """72 px wide: decord 0.6.0 fails to copy the frames out. A raw .h264 stream: decord refuses it
    ('broken metadata'), and the container claims no frame count, so nothing can look truncated."""
    frames = make_frames(T=6, H=64, W=72, seed=8)
    info = load_video_info(write_clip(tmp_path / f"w72{suffix}", frames), num_frames=6)
    assert info.decoder == "pyav" and info.frames.shape == frames.shape
    assert _nearest(info.frames, frames) == list(range(6))


@pytest.mark.parametrize("codec, suffix", [
    ("h264", ".mp4"), ("h264", ".mkv"), ("hevc", ".mp4"), ("vp9", ".webm"), ("mpeg4", ".mp4"), ("mjpeg", ".avi"),
])
def test_decord_and_pyav_give_the_same_frames(tmp_path, codec, suffix):
    """Measured: bit-identical pixels (max difference 0) and the same indices for every codec here,
    in uniform and fps mode, short clips included (16 frames asked of 12)."""
    if not can_encode(codec):
        pytest.skip(f"no {codec} encoder in this PyAV build")
    frames = make_frames(T=12, H=64, W=96, seed=7)
    path = write_clip(tmp_path / f"clip{suffix}", frames, codec=codec)
    header = _read_header(path)
    for num_frames, fps in ((5, None), (16, None), (4, 4.0)):
        by_decord = _decode_with_decord(path, header, num_frames, fps)
        by_pyav = _decode_with_pyav(path, header, num_frames, fps)
        assert by_decord.num_total == by_pyav.num_total == 12
        assert np.array_equal(by_decord.indices, by_pyav.indices)
        assert np.array_equal(by_decord.frames, by_pyav.frames)
    assert _nearest(by_pyav.frames, frames) == [0, 4, 6, 10]   # every 2nd frame (4 of 8 fps), capped at 4


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_pyav_rotation_matches_decords_own_on_mp4(tmp_path, rotation):
    """decord rotates mp4 files itself (not matroska): on mp4 the two must agree exactly."""
    import decord

    path = write_clip(tmp_path / "rot.mp4", make_frames(T=6, H=64, W=96, seed=9), rotation=rotation)
    info = load_video_info(path, num_frames=4)
    assert info.decoder == "pyav" and info.rotation == rotation
    expected = decord.VideoReader(str(path), num_threads=1).get_batch(info.indices.tolist()).asnumpy()
    assert np.array_equal(info.frames, expected)


def test_short_complete_clip_repeats_frames(tmp_path):
    """A genuinely 3-frame clip asked for 8 gives 8 frames by uniform sampling (as LLaVA-NeXT-Video
    samples): repeats are the clip, not damage. Only a clip shorter than its header is an error."""
    frames = make_frames(T=3, H=64, W=96, seed=10)
    for suffix in (".mp4", ".mkv"):
        path = write_clip(tmp_path / f"short{suffix}", frames)
        info = load_video_info(path, num_frames=8)
        assert info.num_total == 3 and info.indices.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
        assert _nearest(info.frames, frames) == info.indices.tolist()
        pyav = _decode_with_pyav(path, _read_header(path), 8, None)
        assert np.array_equal(pyav.frames, info.frames)


# -- user findings: valid videos rejected, truncated videos accepted ------------------------------

@pytest.mark.parametrize("suffix, rotation", [
    (".mp4", 90), (".mp4", 180), (".mp4", 270), (".mkv", 90), (".mkv", 270), (".webm", 180),
])
def test_rotated_videos_come_out_upright(tmp_path, suffix, rotation):
    """Phones store portrait video as landscape frames plus a display rotation; the model must see
    what a player shows: the stored frames turned `rotation` degrees counter-clockwise."""
    frames = make_frames(T=6, H=64, W=96, seed=2)
    codec = "vp9" if suffix == ".webm" else "h264"
    path = write_clip(tmp_path / f"rot{suffix}", frames, codec=codec, rotation=rotation)
    upright = np.rot90(frames, rotation // 90, axes=(1, 2))
    out = load_video(path, num_frames=6)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < 4
    assert _nearest(out, upright) == list(range(6))


def test_portrait_phone_clip_is_not_called_corrupt(tmp_path):
    """A 128x72 landscape stream rotated to portrait is 72 px wide upright, a width decord 0.6.0
    cannot convert: it used to be rejected as 'truncated or corrupt'."""
    frames = make_frames(T=6, H=72, W=128, seed=3)
    path = write_clip(tmp_path / "portrait.mp4", frames, rotation=270)
    out = load_video(path, num_frames=6)
    upright = np.rot90(frames, 3, axes=(1, 2))
    assert out.shape == (6, 128, 72, 3)
    assert _nearest(out, upright) == list(range(6))


def test_legacy_rotate_tag_is_applied(tmp_path):
    """ffmpeg < 5 exported rotation as a `rotate` tag (clockwise) that remuxing kept in matroska."""
    frames = make_frames(T=4, H=64, W=96, seed=4)
    path = write_clip(tmp_path / "tag.mkv", frames, rotate_tag=90)
    out = load_video(path, num_frames=4)
    assert _nearest(out, np.rot90(frames, -1, axes=(1, 2))) == list(range(4))


def test_av1_video_decodes(tmp_path):
    """decord 0.6.0 cannot open AV1 ('cannot find video stream'); PyAV can."""
    if not can_encode("av1"):
        pytest.skip("no AV1 encoder in this PyAV build")
    frames = make_frames(T=8, H=64, W=96, seed=5)
    path = write_clip(tmp_path / "av1.mp4", frames, codec="av1")
    out = load_video(path, num_frames=8)
    assert np.abs(out.astype(int) - frames).mean() < 4
    assert _nearest(out, frames) == list(range(8))


def test_truncated_mkv_is_an_error_not_repeated_frames(tmp_path):
    """A cut mkv still claims its full duration (16 frames) but holds 5; decord used to sample 8
    frames from those 5, repeating some, without a word."""
    full = write_clip(tmp_path / "full.mkv", make_frames(T=16, H=64, W=96, seed=6))
    cut = truncate_clip(full, tmp_path / "cut.mkv", keep=5)
    with pytest.raises(MediaError, match=r"cut\.mkv: truncated video.*16 frames.*5"):
        load_video(cut, num_frames=8)
