"""Preference pairs the synthetic world gives for free, from its exact ground truth.

Two kinds, both on TRAINING images (the POPE questions and CHAIR captions come from the held-out test images):

- answer pairs: "Is there a X in the image?" with chosen = the true answer, rejected = the other one.
  Negatives are drawn the way POPE's adversarial split draws them (Li et al. 2023, arXiv 2305.10355):
  the absent co-occurring partner of a present object when there is one, else a random absent class.
  This is what a user builds from COCO-style annotations (HA-DPO-style hallucination pairs).
- caption pairs: "Describe the image." with chosen = the true caption and rejected = the same caption with
  the absent co-occurring partner of a present object added, the hallucination the world teaches. Rejections
  made by inserting hallucinated objects into a correct description are how HA-DPO (Zhao et al. 2023, arXiv
  2311.16839) and POVID (Zhou et al. 2024, arXiv 2402.11411) build caption preferences; the world knows exactly
  which objects are absent. Only scenes with an absent partner give a pair (about 7% of training scenes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmpo.demo.world import CAPTION_Q, CLASS_COLOURS, IMAGE_Q, WorldConfig, caption, partner_of
from mmpo.records import PairRecord, SFTRecord, pair_id, read_sft, write_jsonl


def _absent_negative(present: list[str], cfg: WorldConfig, rng: np.random.Generator) -> str | None:
    partners = [p for p in (partner_of(c, cfg) for c in present) if p and p not in present]
    if partners:
        return str(rng.choice(partners))
    absent = [c for c in cfg.classes if c not in present]
    return str(rng.choice(absent)) if absent else None


def answer_pairs(scenes: list[dict], cfg: WorldConfig, n_images: int, seed: int = 0) -> list[PairRecord]:
    """One yes-pair and one no-pair per image (first `n_images` training scenes)."""
    rng = np.random.default_rng(seed)
    out = []
    for sc in scenes[:n_images]:
        present = [o["cls"] for o in sc["objects"]]
        pos = present[0]
        neg = _absent_negative(present, cfg, rng)
        for obj, truth in ((pos, "yes"), (neg, "no")):
            if obj is None:
                continue
            q, wrong = IMAGE_Q.format(obj), "no" if truth == "yes" else "yes"
            kind = "partner" if truth == "no" and obj in {partner_of(c, cfg) for c in present} else truth
            out.append(PairRecord(id=pair_id([sc["file"]], q, truth, wrong), media=(sc["file"],), media_type="image",
                                  prompt=q, chosen=truth, rejected=wrong, source="world_answers",
                                  meta={"gt": truth, "kind": kind}))
    return out


def caption_pairs(scenes: list[dict], cfg: WorldConfig, seed: int = 0) -> list[PairRecord]:
    """True caption vs the caption with one absent partner added, for every scene missing a partner."""
    rng = np.random.default_rng(seed)
    out = []
    for sc in scenes:
        present = [o["cls"] for o in sc["objects"]]
        absent_partners = sorted({p for p in (partner_of(c, cfg) for c in present) if p and p not in present})
        if not absent_partners:
            continue
        fake = str(rng.choice(absent_partners))
        true, wrong = caption(sc["objects"], cfg), caption(sc["objects"] + [{"cls": fake, "colour": CLASS_COLOURS[fake]}], cfg)
        out.append(PairRecord(id=pair_id([sc["file"]], CAPTION_Q, true, wrong), media=(sc["file"],), media_type="image",
                              prompt=CAPTION_Q, chosen=true, rejected=wrong, source="world_captions",
                              meta={"gt": true, "hallucinated": fake}))
    return out


def write_world_pairs(world_dir: Path, cfg: WorldConfig, n_images: int, seed: int = 0) -> dict[str, Path]:
    """Write pairs_answers.jsonl (first `n_images` scenes), pairs_captions.jsonl (every scene missing a partner)
    and sft_subset.jsonl (for the augment builder) into the world."""
    scenes = json.loads((world_dir / "scenes.json").read_text())["train"]
    paths = {"answers": world_dir / "pairs_answers.jsonl", "captions": world_dir / "pairs_captions.jsonl",
             "sft_subset": world_dir / "sft_subset.jsonl"}
    write_jsonl(paths["answers"], answer_pairs(scenes, cfg, n_images, seed))
    write_jsonl(paths["captions"], caption_pairs(scenes, cfg, seed))
    subset = [SFTRecord(id=f"sub{i}", media=(sc["file"],), media_type="image",
                        prompt=IMAGE_Q.format(sc["objects"][0]["cls"]), answer="yes")
              for i, sc in enumerate(scenes[:n_images])]
    write_jsonl(paths["sft_subset"], subset)
    return paths


def write_example_data(out_dir: str | Path, seed: int = 0) -> dict:
    """A small world to try mmpo on in a minute (`mmpo make-data`): real files in the layouts mmpo reads.

    64 training images with SFT records (`sft.jsonl`) and answer pairs (`pairs_answers.jsonl`), 64 held-out
    images with COCO instances (`annotations.json`, what `mmpo eval pope-build` reads), 8 short videos with
    SFT records (`sft_video.jsonl`; `videos.jsonl` holds one per video, the input of the video builders) and
    VideoHallucer-style pairs (`videohallucer/`).

    Args:
        out_dir: output folder (created).
        seed: world seed.

    Returns:
        The world.json dict plus `pairs`: the pair files written.
    """
    from mmpo.demo.world import build_world

    cfg = WorldConfig(seed=seed, n_images=64, n_test_images=64, n_videos=8)
    info = build_world(cfg, out_dir, videos=True)
    info["pairs"] = write_world_pairs(Path(out_dir), cfg, n_images=cfg.n_images, seed=seed)
    first_per_video = {r.media: r for r in reversed(read_sft(Path(out_dir) / "sft_video.jsonl"))}
    write_jsonl(Path(out_dir) / "videos.jsonl", sorted(first_per_video.values(), key=lambda r: r.media))
    return info
