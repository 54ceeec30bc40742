"""Augmentation builder (PaMi-VDPO / VDPO, and mDPO-style image corruption): SFT samples -> pairs.

Each SFT sample (media, prompt, answer) becomes one conditional-media pair: chosen = rejected = the
answer, and the rejected side is the media under an augmentation (docs/METHODS.md §1, "Data builder").
A bag of K candidate `AugSpec`s is sampled deterministically from (seed, record id) and stored as
specs in `rejected_bag` (the trainer applies them on the fly), not as pixels.

Optional CLIP prefilter [RECONSTRUCTION]: candidates whose CLIP media similarity to the original is
above `max_similarity` are near-identical, i.e. the "false rejections" PaMi-VDPO warns about; they are
dropped and all similarities recorded in `scores["clip_sim"]`. (PaMi itself measures prompt-awareness
with the policy's JS divergence during training, `mmpo.losses`; this is a cheap offline guard.)
`materialize: true` writes the least similar candidate to `out_dir/media/` and sets `rejected_media`
instead of the bag, for users who want fixed pairs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from mmpo.builders import shards
from mmpo.builders.common import BadInput, ResumableWriter, finish, prepared_items, progress
from mmpo.formats import read_set
from mmpo.formats.mapping import SOURCE_LINK
from mmpo.media import IMAGE_OPS, VIDEO_OPS, MediaError, augment, load_media
from mmpo.records import AugSpec, PairRecord, SFTRecord, default_media_root, make_id, pair_id
from mmpo.schema import check_range

# The confirmed PaMi ops first (frame shuffle, temporal reversal, crop), then our reconstruction.
DEFAULT_VIDEO_OPS = ["frame_shuffle", "temporal_reverse", "spatial_crop", "frame_drop", "segment_swap",
                     "gaussian_noise", "gaussian_blur"]
DEFAULT_IMAGE_OPS = ["mdpo_crop", "gaussian_noise", "gaussian_blur", "region_mask"]
# Shards take single items: an item's specs depend only on (seed, its id), and nothing is batched across items.
BLOCK = 1


@dataclass
class AugmentConfig:
    in_sft: str = ""  # SFT JSONL (media, prompt, answer) to turn into conditional-media pairs
    media_root: str = ""  # folder the SFT media paths are under ("" = from a manifest.json beside the input, else its folder)
    out_dir: str = "data/augment"  # output folder: pairs.jsonl, manifest.json, done.txt (resumable)
    seed: int = 0  # with each record id, seeds the choice of ops and each op's own seed
    num_candidates: int = 4  # K augmentation specs per sample (the PaMi bag; METHODS §1 default 4)
    video_ops: list[str] = field(default_factory=lambda: list(DEFAULT_VIDEO_OPS))  # pool for videos
    image_ops: list[str] = field(default_factory=lambda: list(DEFAULT_IMAGE_OPS))  # pool for images
    op_params: dict = field(default_factory=dict)  # per-op parameters, e.g. {gaussian_noise: {std: 40}}
    num_frames: int = 8  # frames decoded per video (validation, prefilter, materialize)
    clip_model: str = ""  # open_clip local-dir checkpoint for the prefilter ("" = prefilter off)
    clip_device: str = "cpu"  # device of the CLIP prefilter
    max_similarity: float = 0.98  # drop candidates with CLIP media similarity above this (near-identical)
    materialize: bool = False  # write the least similar candidate to out_dir/media and set rejected_media
    num_workers: int = 0  # processes that decode + augment (0 = in the main process)
    fresh: bool = False  # discard an earlier partial build instead of resuming it
    progress: bool = True  # tqdm progress bar
    shard: str = ""  # build shard i/N of the input ("0/4") into out_dir/shards/i-of-N ("" = all; launched: one per rank)
    merge: bool = False  # write out_dir/pairs.jsonl + manifest.json from the finished shards, as one process would

    def __post_init__(self):
        check_range(self, num_candidates=">= 1", num_frames=">= 1", num_workers=">= 0")


def sample_specs(cfg: AugmentConfig, record_id: str, media_type: str) -> tuple[AugSpec, ...]:
    """The K candidate specs of one record: a pure function of (seed, record id, op pool).

    Args:
        cfg: builder config (seed, num_candidates, op pools, op_params).
        record_id: the SFT record's id.
        media_type: "image" or "video" (selects the pool).

    Returns:
        K AugSpecs (distinct ops while the pool is large enough).
    """
    pool = cfg.video_ops if media_type == "video" else cfg.image_ops
    if not pool:
        raise ValueError(f"augment: empty op pool for {media_type}s")
    rng = np.random.default_rng([cfg.seed, int(make_id("augment", record_id), 16)])
    k = cfg.num_candidates
    ops = list(rng.choice(pool, size=k, replace=k > len(pool)))
    return tuple(AugSpec(str(op), dict(cfg.op_params.get(op, {})), int(rng.integers(2**31 - 1))) for op in ops)


def _check_config(cfg: AugmentConfig) -> None:
    for op in cfg.video_ops:
        if op not in VIDEO_OPS:
            raise ValueError(f"augment: video_ops: {op!r} is not a video op (valid: {list(VIDEO_OPS)})")
    for op in cfg.image_ops:
        if op not in IMAGE_OPS:
            raise ValueError(f"augment: image_ops: {op!r} is not an image op (valid: {list(IMAGE_OPS)})")
    if cfg.num_candidates < 1:
        raise ValueError("augment: num_candidates must be >= 1")
    if not cfg.in_sft:
        raise ValueError("augment: in_sft is required (an SFT JSONL file)")


def prepare(rec: SFTRecord, cfg: AugmentConfig, root: Path, need_pixels: bool) -> dict:
    """Worker job: decode the media (validates it) and, when needed, apply every candidate spec.

    Errors come back as values so one bad file never stops a worker pool.
    """
    try:
        media = load_media(root, rec.media, rec.media_type, cfg.num_frames)
        specs = sample_specs(cfg, rec.id, rec.media_type)
        out = {"specs": specs, "media": media if need_pixels else None, "augmented": []}
        if need_pixels:  # several images: each gets the same spec, as the trainer applies a bag (batches.py)
            out["augmented"] = [[augment(m, s) for m in media] if isinstance(media, list) else augment(media, s)
                                for s in specs]
        return out
    except (MediaError, ValueError, OSError) as exc:
        return {"error": str(exc).splitlines()[0][:300]}


def clip_similarities(scorer, media, augmented: list) -> list[float]:
    """CLIP similarity of each candidate to the original: mean over aligned frames of the per-frame
    cosine, with one batched image encode for all frames of the record.

    Aligned frames, not `ClipScorer.media_similarity`: the cosine of mean frame embeddings is blind to
    frame order, so it would call every shuffled or reversed clip identical and drop exactly the
    temporal ops PaMi-VDPO confirms. For an image this is the plain image cosine; for several images the mean of
    each image's cosine to its own augmented copy.
    """
    def frames(m):
        if isinstance(m, list):  # several images: aligned one for one like frames
            return m
        return [m] if isinstance(m, Image.Image) else [Image.fromarray(f) for f in m]

    groups = [frames(media)] + [frames(a) for a in augmented]
    emb = scorer.encode_images([im for g in groups for im in g]).split([len(g) for g in groups])
    ref = emb[0]
    sims = []
    for e in emb[1:]:
        t = min(len(ref), len(e))  # ops keep the frame count; guard anyway
        sims.append(round(float((ref[:t] * e[:t]).sum(-1).mean()), 6))
    return sims


def _even(frames: np.ndarray) -> np.ndarray:
    """H.264 yuv420p needs even sizes: drop a trailing row/column if needed."""
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    return np.ascontiguousarray(frames[:, :h, :w])


def write_media(media, path: Path) -> Path | list[Path]:
    """Write an image (PNG) or a clip (H.264 mp4 via PyAV) for `materialize`; several images: `<path>_<i>.png`."""
    if isinstance(media, list):
        return [write_media(m, path.with_name(f"{path.name}_{i}")) for i, m in enumerate(media)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(media, Image.Image):
        media.save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    import av  # lazy: only materialized video builds need the encoder

    path = path.with_suffix(".mp4")
    frames = _even(media)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # mbtree=0: x264's macroblock-tree rate control now and then writes other bytes for the same frames
        # (benchmarks/LOG.md, issue 25); without it a materialized rejection is the same file every run
        stream.options = {"x264-params": "mbtree=0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_pair(rec: SFTRecord, specs: tuple, scores: dict, rejected_media: tuple | None, prefix: str = "") -> PairRecord:
    """The conditional-media pair: same text on both sides, the rejection is in the media.

    The materialized spec is kept in meta["rejected_spec"] so the fixed rejection stays reproducible.
    """
    bag = None if rejected_media else specs
    media = tuple(prefix + m for m in rec.media)  # prefix: see set_media_root
    return PairRecord(id=pair_id(media, rec.prompt, rec.answer, rec.answer, rejected_media, bag),
                      media=media, media_type=rec.media_type, prompt=rec.prompt, chosen=rec.answer,
                      rejected=rec.answer, rejected_media=rejected_media, rejected_bag=bag, scores=scores,
                      source="augment",
                      meta={"sft_id": rec.id, **rec.meta, **({"rejected_spec": specs[0].to_json()} if rejected_media else {})})


def process(rec: SFTRecord, prep: dict, cfg: AugmentConfig, root: Path, scorer, prefix: str = ""
            ) -> tuple[list, dict]:
    """Main-process half: prefilter with CLIP, optionally materialize, build the pair.

    Raises:
        BadInput: the media failed to decode, or every candidate was near-identical.
    """
    if "error" in prep:
        raise BadInput(prep["error"])
    specs, counts, scores = prep["specs"], {}, {}
    augmented = prep["augmented"]
    sims = None
    if scorer is not None:
        all_sims = clip_similarities(scorer, prep["media"], augmented)
        keep = [i for i, s in enumerate(all_sims) if s <= cfg.max_similarity]
        counts["candidates_dropped"] = len(specs) - len(keep)
        if not keep:
            raise BadInput(f"all {len(specs)} candidates near-identical (CLIP sim > {cfg.max_similarity})")
        specs, augmented = tuple(specs[i] for i in keep), [augmented[i] for i in keep]
        sims = [all_sims[i] for i in keep]
        scores = {"clip_sim": sims, "clip_sim_dropped": [s for s in all_sims if s > cfg.max_similarity]}
    rejected_media = None
    if cfg.materialize:
        best = int(np.argmin(sims)) if sims is not None else 0  # the least similar = the most distinct
        path = write_media(augmented[best], Path(cfg.out_dir) / "media" / rec.id)
        rejected_media = tuple(_relative(p, root) for p in (path if isinstance(path, list) else [path]))
        specs = (specs[best],)
        scores = {"clip_sim": [sims[best]]} if sims is not None else {}
    counts["pairs"] = 1
    return [make_pair(rec, specs, scores, rejected_media, prefix)], counts


def _relative(path: Path, root: Path) -> str:
    return str(path.resolve().relative_to(root.resolve()))


def set_media_root(cfg: AugmentConfig, root: Path) -> tuple[Path, str]:
    """The media root of the built set, and the prefix its chosen media paths get.

    Materialized rejections live in `out_dir/media`. When that is inside the input's media root, the set keeps that
    root. Otherwise the set's root is `out_dir` itself, with a link `out_dir/source` to the input's root, so the
    chosen media read as `source/<path>` and the rejections as `media/<file>` (media paths never leave their root).
    """
    if not cfg.materialize:
        return root, ""
    try:
        _relative(Path(cfg.out_dir) / "media", root)
        return root, ""
    except ValueError:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        link = out / SOURCE_LINK
        if link.is_symlink() and link.resolve() != root.resolve():
            raise ValueError(f"augment: {link} links to {link.resolve()}, not this input's media root {root}; "
                             "use another out_dir") from None
        if not link.is_symlink():
            link.symlink_to(root.resolve(), target_is_directory=True)
        return out, SOURCE_LINK + "/"


def build(cfg: AugmentConfig, on_record: Callable[[int], None] | None = None) -> Path:
    """Build conditional-media pairs from an SFT file (resumable).

    Args:
        cfg: builder config.
        on_record: called with the number of items committed so far after each one (tests use it to
            simulate a crash).

    Returns:
        The output folder (pairs.jsonl, manifest.json, done.txt[, media/]); a shard's own folder under
        `out_dir/shards/` when `cfg.shard` (or a launcher) makes this process one shard.
    """
    _check_config(cfg)
    root = default_media_root(cfg.in_sft, cfg.media_root)
    set_root, prefix = set_media_root(cfg, root)
    records = read_set(cfg.in_sft, "sft", key="in_sft")
    ids = [r.id for r in records]
    if cfg.merge:
        return finish(shards.merge(cfg, ids, cfg.in_sft, BLOCK), cfg, ids, set_root, builder="augment")
    shard, out_dir, mine = shards.plan(cfg, ids, cfg.in_sft, BLOCK)
    writer = ResumableWriter(out_dir, fresh=cfg.fresh)
    scorer = None
    if cfg.clip_model:
        from mmpo.clip import load_clip

        shards.use_rank_gpu()
        scorer = load_clip(cfg.clip_model, cfg.clip_device)
    need_pixels = scorer is not None or cfg.materialize
    todo = [records[p] for p in mine if not writer.is_done(ids[p])]
    job = functools.partial(prepare, cfg=cfg, root=root, need_pixels=need_pixels)
    stream = prepared_items(todo, job, cfg.num_workers)
    for n, (rec, prep) in enumerate(progress(stream, len(todo), cfg.progress, "augment"), 1):
        try:
            pairs, counts = process(rec, prep, cfg, set_root, scorer, prefix)
            writer.commit(rec.id, pairs, counts)
        except BadInput as exc:
            writer.commit(rec.id, [], {}, skipped=f"{'/'.join(rec.media)}: {exc}")
        if on_record is not None:
            on_record(n)
    return finish(writer, cfg, [ids[p] for p in mine], set_root, builder="augment", **shards.shard_manifest(shard))
