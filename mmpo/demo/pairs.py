"""Preference pairs the synthetic world gives for free, from its exact ground truth.

Two kinds, both on TRAINING images (the POPE questions come from the held-out test images):

- answer pairs: "Is there a X in the image?" with chosen = the true answer, rejected = the other one.
  Negatives are drawn the way POPE's adversarial split draws them (Li et al. 2023, arXiv 2305.10355):
  the absent co-occurring partner of a present object when there is one, else a random absent class.
  This is what a user builds from COCO-style annotations (HA-DPO-style hallucination pairs).
- counterfactual pairs (mDPO's conditional preference, arXiv 2406.11839): the same question and the same
  answer "yes", rejected media = the scene re-rendered without the asked object (`render_image(drop=)`),
  so only the visual evidence differs. The world makes this exact "region mask" for free.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmpo.demo.world import IMAGE_Q, WorldConfig, partner_of, render_image
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


def counterfactual_pairs(scenes: list[dict], cfg: WorldConfig, world_dir: Path, n_images: int,
                         offset: int = 0) -> list[PairRecord]:
    """Same question, same answer "yes"; rejected media = the scene without the asked object (rendered to disk)."""
    (world_dir / "counterfactual").mkdir(exist_ok=True)
    out = []
    for sc in scenes[offset:offset + n_images]:
        obj = sc["objects"][0]["cls"]
        rel = f"counterfactual/{Path(sc['file']).stem}_no_{obj}.png"
        if not (world_dir / rel).exists():
            render_image(sc, cfg, drop=obj).save(world_dir / rel)
        q = IMAGE_Q.format(obj)
        out.append(PairRecord(id=pair_id([sc["file"]], q, "yes", "yes", [rel]), media=(sc["file"],),
                              media_type="image", prompt=q, chosen="yes", rejected="yes", rejected_media=(rel,),
                              source="world_counterfactual", meta={"gt": "yes", "dropped": obj}))
    return out


def write_world_pairs(world_dir: Path, cfg: WorldConfig, n_images: int, seed: int = 0) -> dict[str, Path]:
    """Write answers.jsonl, counterfactual.jsonl and sft_subset.jsonl (for the augment builder) into the world."""
    scenes = json.loads((world_dir / "scenes.json").read_text())["train"]
    paths = {"answers": world_dir / "pairs_answers.jsonl", "counterfactual": world_dir / "pairs_counterfactual.jsonl",
             "sft_subset": world_dir / "sft_subset.jsonl"}
    write_jsonl(paths["answers"], answer_pairs(scenes, cfg, n_images, seed))
    write_jsonl(paths["counterfactual"], counterfactual_pairs(scenes, cfg, world_dir, n_images))
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
