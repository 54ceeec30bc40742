"""Difficulty builder (DA-DPO, docs/METHODS.md §3): pairs -> the same pairs with difficulty scores.

Two scorers per response [RECONSTRUCTION of the unreleased estimation scripts]:
- contrastive: CLIP cosine(image or frames, response text), long answers averaged by sentence
  (`ClipScorer.frame_text_similarity`'s score, computed a batch at a time by `clip_scores`);
- generative: length-normalised log-likelihood under a VLM, g(y) = log p(y|v,q) / |y|
  (`mmpo.logprobs.plain_logps`, batched).
Distribution-aware voting (`vote`): each scorer's margins m = s(y_w) - s(y_l) are standardised over the
whole set, z = (m - mu) / sigma (optionally Phi(z)), and fused with weights proportional to each
scorer's agreement with the preference labels (share of pairs with m > 0). The fused margin is written
as `scores["delta"]`, which the DA-DPO loss reads (Artanic30/DA-DPO llava/train/da_dpo.py:
w = alpha * (1 + |delta|)); `write_weight` also stores that w in `weight`.

Scoring is resumable (raw scores go to `raw_scores.jsonl` with its own done-index); the fused pairs
need statistics of the whole set, so `pairs.jsonl` is written in one go at the end (tmp + rename).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mmpo.builders import shards
from mmpo.builders.common import ResumableWriter, finish, fsync_text, progress, valid_lines
from mmpo.config import ModelConfig
from mmpo.formats import read_set
from mmpo.media import MediaError, load_media
from mmpo.records import PairRecord, default_media_root

RAW_FILE = "raw_scores.jsonl"
SCORERS = ("clip", "gen")
# Settings of the voting only, not of the scores: a merge may change them (re-vote without rescoring).
VOTE_KEYS = ("use_phi", "write_weight", "alpha", "plots")


@dataclass
class DifficultyConfig:
    in_pairs: str = ""  # pair JSONL to score (any builder's output, or external pairs)
    media_root: str = ""  # folder the pair media paths are under ("" = from a manifest.json beside the input, else its folder)
    out_dir: str = "data/difficulty"  # output folder: pairs.jsonl, manifest.json, raw_scores.jsonl, plots
    seed: int = 0  # recorded in the manifest (scoring is deterministic)
    clip_model: str = ""  # open_clip checkpoint for the contrastive score (DA-DPO: ViT-L/14-336)
    clip_device: str = "cpu"  # device of the CLIP scorer
    model: ModelConfig = field(default_factory=ModelConfig)  # VLM for the generative score (e.g. base LLaVA-1.5)
    batch_size: int = 8  # pairs per generative scoring batch
    use_phi: bool = False  # fuse Phi(z) (Gaussian CDF) instead of z
    write_weight: bool = False  # also set weight = alpha * (1 + |delta|) (DA-DPO's per-pair beta scale)
    alpha: float = 1.0  # DA-DPO db_alpha (used by write_weight)
    plots: bool = True  # write clip_margin.png, gen_margin.png, fused.png
    fresh: bool = False  # discard an earlier partial scoring run instead of resuming it
    progress: bool = True  # tqdm progress bar
    shard: str = ""  # score shard i/N (whole batches) into out_dir/shards/i-of-N ("" = all; launched: one per rank)
    merge: bool = False  # fuse the finished shards' scores into out_dir/pairs.jsonl, as one process would


def vote(margins: dict[str, np.ndarray], use_phi: bool = False) -> tuple[dict, dict, np.ndarray]:
    """Distribution-aware voting [RECONSTRUCTION, METHODS §3].

    Args:
        margins: scorer name -> per-pair margins s(y_w) - s(y_l), all of the same length N.
        use_phi: map z through the standard normal CDF before fusing.

    Returns:
        (weights {name: w_k}, summing to 1 and proportional to each scorer's agreement with the labels;
         z-scores {name: [N]}; fused [N] = sum_k w_k * z_k (or Phi(z_k))).
    """
    agree = {k: float(np.mean(m > 0)) if len(m) else 0.0 for k, m in margins.items()}
    total = sum(agree.values())
    # No scorer agrees with any label: fall back to equal votes rather than dividing by zero.
    weights = {k: (a / total if total > 0 else 1.0 / len(agree)) for k, a in agree.items()}
    z = {}
    for k, m in margins.items():
        sigma = float(np.std(m)) if len(m) else 0.0
        z[k] = (m - np.mean(m)) / sigma if sigma > 0 else np.zeros_like(m)  # a constant scorer carries no signal
    fused = np.zeros(len(next(iter(margins.values())))) if margins else np.zeros(0)
    for k in margins:
        part = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z[k]]) if use_phi else z[k]
        fused = fused + weights[k] * part
    return weights, z, fused


def _media_pair(rec: PairRecord, root: Path, num_frames: int):
    """Media of the chosen and rejected side (a conditional-media pair has its own rejected media)."""
    chosen = load_media(root, rec.media, rec.media_type, num_frames)
    rejected = load_media(root, rec.rejected_media, rec.media_type, num_frames) if rec.rejected_media else chosen
    return chosen, rejected


def gen_scores(model, processor, batch: list, media_type: str) -> list[tuple[float, float]]:
    """Length-normalised log-likelihoods (chosen, rejected) for a batch of (record, media_w, media_l)."""
    import torch

    from mmpo.logprobs import plain_logps
    from mmpo.models import encode_answers, encode_prompts

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        sides = []
        for side in (0, 1):
            prompts = [r.prompt for r, *_ in batch]
            media = [m[side] for _, *m in batch]
            answers = [r.chosen if side == 0 else r.rejected for r, *_ in batch]
            pb = {k: v.to(device) for k, v in encode_prompts(processor, prompts, media, media_type).items()}
            ab = {k: v.to(device) for k, v in encode_answers(processor, answers).items()}
            s, n = plain_logps(model, pb, ab)
            sides.append((s / n.clamp_min(1)).float().cpu().tolist())
        out = list(zip(sides[0], sides[1]))
    return out


def _frames(media) -> list:
    """An image, several images or a (T, H, W, 3) clip as a list of PIL frames.

    Several images count like a clip's frames: s(y) is the cosine averaged over every image and sentence, so
    an answer true of one image and not the others scores between the two.
    """
    from PIL import Image

    if isinstance(media, list):
        return list(media)
    return [media] if isinstance(media, Image.Image) else [Image.fromarray(f) for f in media]


def clip_scores(clip, batch: list) -> list[tuple[float, float]]:
    """CLIP scores s(y_w), s(y_l) for a batch of (record, media_w, media_l), in one image and one text encode.

    s(y) is `ClipScorer.frame_text_similarity`'s: the cosine averaged over the frames and over the answer's
    sentences. Batched rather than per answer, and each distinct media item encoded once (a pair with no
    rejected media has the same media object on both sides): per pair and side it was two encodes each.
    """
    media, slot = [], {}
    for _, mw, ml in batch:
        for m in (mw, ml):
            if id(m) not in slot:
                slot[id(m)] = len(media)
                media.append(m)
    frames = [_frames(m) for m in media]
    images = clip.encode_images([f for fs in frames for f in fs]).split([len(fs) for fs in frames])
    pieces = [clip.split_text(text) for rec, _, _ in batch for text in (rec.chosen, rec.rejected)]
    texts = clip.encode_texts([p for ps in pieces for p in ps]).split([len(ps) for ps in pieces])
    scores = []
    for k, (_, mw, ml) in enumerate(batch):  # mean of the [frames, sentences] cosines of each side
        chosen = (images[slot[id(mw)]] @ texts[2 * k].T).mean()
        rejected = (images[slot[id(ml)]] @ texts[2 * k + 1].T).mean()
        scores.append((float(chosen), float(rejected)))
    return scores


def score_batch(batch: list, clip, model, processor) -> list[dict]:
    """Raw scores of a batch of (record, media_w, media_l) sharing one media type."""
    gens = gen_scores(model, processor, batch, batch[0][0].media_type) if model is not None else [(0.0, 0.0)] * len(batch)
    clips = clip_scores(clip, batch) if clip is not None else None
    rows = []
    for k, ((rec, _, _), (gw, gl)) in enumerate(zip(batch, gens)):
        row = {"id": rec.id, "gen_chosen": round(gw, 6), "gen_rejected": round(gl, 6)}
        if clips is not None:
            row.update(clip_chosen=round(clips[k][0], 6), clip_rejected=round(clips[k][1], 6))
        rows.append(row)
    return rows


def _load_batch(batch: list[PairRecord], root: Path, num_frames: int, writer: ResumableWriter) -> dict[str, list]:
    """Decode a batch's media, grouped by media type; a pair with bad media is left out and recorded as skipped.

    The media are decoded before a pair joins its group, so a bad file never leaves an empty group behind.
    """
    groups: dict[str, list] = {}
    for rec in batch:
        try:
            media = _media_pair(rec, root, num_frames)
        except (MediaError, OSError) as exc:
            if not writer.is_done(rec.id):  # a batch re-scored after a restart meets it again
                writer.commit(rec.id, [], {}, skipped=f"{'/'.join(rec.media)}: {str(exc).splitlines()[0][:300]}")
            continue
        groups.setdefault(rec.media_type, []).append((rec, *media))
    return groups


def _score_all(cfg, records, mine, root, writer, clip, model, processor, on_record) -> None:
    """Score every not-yet-scored pair of this build's batches; bad media are skipped and recorded.

    Batches are cut by position in the input file (index // batch_size), never by what is left to do or by
    which shard runs them (a shard owns whole batches, `mmpo.builders.shards`), and a batch with any pair
    left is scored whole (only the new rows are written). A resumed or sharded build thus scores every pair
    in the same batch, padded the same way, as one uninterrupted process: in bf16 the log-likelihoods
    depend on the batch's padding and size, so re-cut batches would give different bytes.
    """
    owned = set(mine)
    batches = [records[i:i + cfg.batch_size] for i in range(0, len(records), cfg.batch_size) if i in owned]
    todo = [b for b in batches if any(not writer.is_done(r.id) for r in b)]
    n_done = 0
    for batch in progress(todo, len(todo), cfg.progress, "difficulty", unit="batch"):
        for group in _load_batch(batch, root, cfg.model.num_frames, writer).values():
            for row in score_batch(group, clip, model, processor):
                if writer.is_done(row["id"]):  # scored before the restart (same batch, same numbers)
                    continue
                writer.commit(row["id"], [row], {"scored": 1})
                n_done += 1
                if on_record is not None:
                    on_record(n_done)


def fuse(records: list[PairRecord], raw: dict[str, dict], cfg: DifficultyConfig) -> tuple[list[PairRecord], dict]:
    """Attach voted difficulty scores (and optionally weights) to every scored pair."""
    recs = [r for r in records if r.id in raw]
    used = [k for k in SCORERS if all(f"{k}_chosen" in raw[r.id] for r in recs)] if recs else []
    margins = {k: np.array([raw[r.id][f"{k}_chosen"] - raw[r.id][f"{k}_rejected"] for r in recs]) for k in used}
    weights, z, fused = vote(margins, cfg.use_phi) if margins else ({}, {}, np.zeros(len(recs)))
    out = []
    for i, r in enumerate(recs):
        scores = {**r.scores, **{k: v for k, v in raw[r.id].items() if k != "id"}}
        scores.update({f"{k}_z": round(float(z[k][i]), 6) for k in used})
        scores.update(fused=round(float(fused[i]), 6), delta=round(float(fused[i]), 6))
        weight = cfg.alpha * (1 + abs(float(fused[i]))) if cfg.write_weight else r.weight
        out.append(dataclasses.replace(r, scores=scores, weight=weight))
    agreement = {k: float(np.mean(m > 0)) for k, m in margins.items()}
    return out, {"vote_weights": weights, "agreement": agreement, "margins": margins, "fused": fused}


def plot(stats: dict, out_dir: Path) -> list[str]:
    """Histograms of each scorer's margins and the fused score (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {f"{k}_margin": v for k, v in stats["margins"].items()} | {"fused": stats["fused"]}
    names = []
    for name, values in series.items():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.hist(values, bins=min(30, max(5, len(values) // 2)))
        ax.set_title(f"{name} (n={len(values)})")
        ax.set_xlabel("chosen - rejected" if name != "fused" else "fused z margin")
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png")
        plt.close(fig)
        names.append(f"{name}.png")
    return names


def build(cfg: DifficultyConfig, on_record: Callable[[int], None] | None = None) -> Path:
    """Score a pair file with DA-DPO difficulty (resumable) and write the re-scored pairs.

    Args:
        cfg: builder config (at least one of clip_model / model.path).
        on_record: called with the count of pairs scored so far (tests simulate crashes with it).

    Returns:
        The output folder (pairs.jsonl, manifest.json, raw_scores.jsonl, *.png); a shard's own folder under
        `out_dir/shards/` (raw scores only: voting needs the whole set) when this process is one shard.
    """
    if not cfg.clip_model and not cfg.model.path:
        raise ValueError("difficulty: set clip_model and/or model.path (no scorer configured)")
    if cfg.batch_size < 1:
        raise ValueError("difficulty: batch_size must be >= 1")
    root = default_media_root(cfg.in_pairs, cfg.media_root)
    records = read_set(cfg.in_pairs, "pair", key="in_pairs")
    ids = [r.id for r in records]
    if cfg.merge:
        writer = shards.merge(cfg, ids, cfg.in_pairs, cfg.batch_size, RAW_FILE, merge_only=VOTE_KEYS)
        return write_scored(cfg, records, root, writer)
    shard, out_dir, mine = shards.plan(cfg, ids, cfg.in_pairs, cfg.batch_size, free=VOTE_KEYS)
    writer = ResumableWriter(out_dir, pairs_file=RAW_FILE, fresh=cfg.fresh)
    clip = model = processor = None
    if any(not writer.is_done(ids[p]) for p in mine):
        shards.use_rank_gpu()
        if cfg.clip_model:
            from mmpo.clip import load_clip

            clip = load_clip(cfg.clip_model, cfg.clip_device)
        if cfg.model.path:
            from mmpo.models import load_model

            model, processor = load_model(cfg.model)
    _score_all(cfg, records, mine, root, writer, clip, model, processor, on_record)
    if shard is not None:  # a shard's manifest counts its scored pairs; pairs.jsonl comes from the merge
        return finish(writer, cfg, [ids[p] for p in mine], root, builder="difficulty", **shards.shard_manifest(shard))
    return write_scored(cfg, records, root, writer)


def write_scored(cfg: DifficultyConfig, records: list[PairRecord], root: Path, writer: ResumableWriter) -> Path:
    """Vote over every raw score in the writer's folder and write pairs.jsonl, the plots and manifest.json."""
    raw = {row["id"]: row for row in map(json.loads, valid_lines(writer.pairs_path))}
    pairs, stats = fuse(records, raw, cfg)
    out_dir = writer.out_dir
    fsync_text(out_dir / "pairs.jsonl", "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs))
    plots = plot(stats, out_dir) if cfg.plots and pairs else []
    writer.pair_ids = {p.id for p in pairs}  # the manifest counts output pairs, not raw score rows
    return finish(writer, cfg, [r.id for r in records], root, builder="difficulty", vote_weights=stats["vote_weights"],
                  agreement=stats["agreement"], plots=plots)
