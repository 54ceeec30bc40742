"""The demo's video side: a tiny LLaVA-NeXT-Video trained on the synthetic video world, then PaMi-VDPO.

Pipeline (each function one stage; `mmpo demo` calls them and passes the builders/evaluators it needs,
because mmpo core never imports `data_builders` or `eval`):

1. `video_eval_world`: held-out videos (new seed, lower co-occurrence) with VideoHallucer-style pair files,
   so the evaluation never sees training videos and many hallucination questions ask about an absent
   co-occurring partner (the training world adds partners with probability `co_prob` ~0.95, so its own
   VideoHallucer file has almost no absent partners to ask about).
2. `train_video_model`: a tiny CLIP pretrained contrastively on the world's frames (`pretrain_clip`), put
   into a tiny `llava_next_video` from the model factory (`clip_to_hf.attach_tower`, frozen), then SFT
   (mmpo trainer, stage sft) of the language model + projector on `sft_video.jsonl` with VideoHallucer's
   answer suffix plus one caption per video (`suffixed_sft`). With `clip_steps=0` the factory's random
   tower is kept and the LLaVA reads its patch-embedding layer (FEATURE_LAYER).
3. `pami_pairs`: conditional pairs for PaMi-VDPO (chosen = rejected = the SFT answer, rejected media = a
   bag of K augmented clips) through the augmentation builder handed in by the caller.
4. `train_pami`: PaMi-VDPO (mmpo loss "pami", LoRA on the language model, reference = adapter off).

The recipe constants below are the ones measured in benchmarks/LOG.md (2026-11-23, video probe).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from mmpo import config as cfgmod
from mmpo.config import TrainConfig
from mmpo.records import read_sft, write_jsonl

FAMILY = "llava_next_video"
IMAGE_SIZE = 64  # frame side the tower sees (world videos are 64x64); patch 16 -> 16 patches, 4 tokens/frame
NUM_FRAMES = 8  # frames per clip (= the world's frames), 4 pooled tokens each -> 32 video tokens
# hidden_states[-3] of the 2-layer tower = its input embeddings (patch embedding + position, after
# pre-LayerNorm): with a random tower this is a linear map of each patch's pixels, which keeps the world's
# class colours separable (benchmarks/LOG.md image probe C2: the random tower's last layer left SFT at
# chance). Not 0: transformers' select_hidden_states treats layer 0 as "no hidden states" (falsy int) and
# get_video_features then fails with `'NoneType' object is not subscriptable`.
FEATURE_LAYER = -3
# VideoHallucer asks every question with this suffix (eval/videohallucer.py PROMPT_SUFFIX, from the
# reference evaluation_utils.py::evaluate); SFT uses the same template so evaluation is in-distribution,
# as LLaVA-1.5's SFT did with its short-answer instruction.
VH_SUFFIX = "\nAnswer the question using 'yes' or 'no'."

CAPTION_Q = "Describe the video."
CAPTIONS = True  # add one caption record per video to the SFT data (see `suffixed_sft`)
CLIP_STEPS = 150  # contrastive steps on video frames (0 = keep the factory's random tower)
SFT_STEPS = 600
SFT_LR = 1e-3
SFT_BATCH = 32

PAMI_OPS = ["frame_shuffle", "temporal_reverse", "spatial_crop", "frame_drop", "segment_swap",
            "gaussian_noise", "gaussian_blur"]  # data_builders/augment.py DEFAULT_VIDEO_OPS
PAMI_K = 4
PAMI_STEPS = 150
PAMI_LR = 5e-4
PAMI_BATCH = 16
PAMI_BETA = 0.1
# Best measured preference recipe (benchmarks/LOG.md, video probe P3): pami + a dpo term on the ground-truth
# yes/no answers of the same records (`with_wrong_answers`). PaMi alone pushed the model to answer "no"
# (VideoHallucer basic accuracy 0.785 -> 0.27); the dpo term anchors the answer. Its gain over the SFT model
# was within seed noise on our tiny model.
PAMI_LOSS = [{"name": "pami", "params": {"beta": PAMI_BETA}}, {"name": "dpo", "weight": 1.0, "params": {"beta": PAMI_BETA}}]


def world_config(world_dir: str | Path):
    """The `WorldConfig` a world folder was built with (from its world.json)."""
    from mmpo.demo.world import WorldConfig

    info = json.loads((Path(world_dir) / "world.json").read_text())
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    return WorldConfig(**{k: v for k, v in info.get("config", {}).items() if k in fields})


def video_eval_world(world_dir: str | Path, out_dir: str | Path, n_videos: int = 200, co_prob: float = 0.2,
                     seed_offset: int = 1000) -> Path:
    """Held-out videos plus VideoHallucer pair files (object_relation, temporal) for evaluation.

    Args:
        world_dir: the training world (its world.json config is reused).
        out_dir: output folder: videos/, video_events.json, videohallucer/<category>/<category>.json.
        n_videos: held-out videos.
        co_prob: partner probability of the held-out videos (low: more absent partners to ask about,
            as POPE's adversarial split and world.py's test_co_prob do).
        seed_offset: added to the world seed so no held-out video equals a training one.

    Returns:
        The `videohallucer` folder (runner `data_dir`; videos are in `out_dir/videos`).
    """
    from mmpo.demo.world import make_video_world, write_videohallucer

    cfg = dataclasses.replace(world_config(world_dir), seed=world_config(world_dir).seed + seed_offset,
                              n_videos=n_videos, co_prob=co_prob)
    out = Path(out_dir)
    gts = make_video_world(cfg, out)
    write_videohallucer(gts, cfg, out / "videohallucer")
    return out / "videohallucer"


def suffixed_sft(world_dir: str | Path, out_path: str | Path, suffix: str = VH_SUFFIX,
                 captions: bool = CAPTIONS) -> Path:
    """The world's sft_video.jsonl with `suffix` on each yes/no prompt, plus one caption record per video.

    Captions ("Describe the video." -> "There is a red circle with a blue square, and ...") put a loss on
    every object word of a video, the dense alignment signal of LLaVA's first stage (Liu et al. 2023,
    arXiv 2304.08485 §4.2: projector pre-training on image-caption pairs); the yes/no answers alone are
    one token each.

    Args:
        world_dir: world folder (sft_video.jsonl, video_events.json, world.json).
        out_path: output JSONL.
        suffix: appended to every yes/no prompt (VideoHallucer's evaluation suffix).
        captions: add the caption records.

    Returns:
        `out_path`.
    """
    from mmpo.demo.world import caption
    from mmpo.records import SFTRecord, make_id

    world = Path(world_dir)
    recs = [dataclasses.replace(r, prompt=r.prompt + suffix) for r in read_sft(world / "sft_video.jsonl")]
    if captions:
        cfg = world_config(world)
        for gt in json.loads((world / "video_events.json").read_text()):
            text = caption(gt["objects"], cfg)
            recs.append(SFTRecord(make_id([gt["video"]], CAPTION_Q, text), (gt["video"],), "video", CAPTION_Q,
                                  text, {"kind": "caption"}))
    write_jsonl(out_path, recs)
    return Path(out_path)


def make_video_model(out_dir: str | Path, words: list[str], seed: int = 0, visual=None,
                     feature_layer: int = FEATURE_LAYER) -> Path:
    """Tiny LLaVA-NeXT-Video checkpoint, optionally with a pretrained open_clip tower (`attach_tower`).

    Args:
        out_dir: checkpoint folder.
        words: vocabulary.
        seed: init seed.
        visual: open_clip VisionTransformer to put in (None: the factory's random tower).
        feature_layer: the tower hidden state the projector reads.

    Returns:
        The checkpoint folder.
    """
    from transformers import AutoModelForImageTextToText

    from mmpo.demo.clip_to_hf import attach_tower
    from mmpo.models import make_tiny_model

    path = make_tiny_model(FAMILY, out_dir, words=words, seed=seed, image_size=IMAGE_SIZE, num_frames=NUM_FRAMES)
    model = AutoModelForImageTextToText.from_pretrained(path)
    if visual is not None:
        attach_tower(model, visual)
    model.config.vision_feature_layer = feature_layer
    model.save_pretrained(path)
    return path


def frame_captions(world_dir: str | Path) -> tuple[list, list[str]]:
    """Every frame of the world's videos with a caption of the objects visible in it.

    Returns:
        (frames as PIL images, captions from `mmpo.demo.world.caption`).
    """
    from PIL import Image

    from mmpo.demo.world import caption
    from mmpo.media import load_video

    world = Path(world_dir)
    cfg = world_config(world)
    images, texts = [], []
    for gt in json.loads((world / "video_events.json").read_text()):
        frames = load_video(world / gt["video"], num_frames=cfg.frames)
        for t, frame in enumerate(frames):
            live = [o for o in gt["objects"] if any(tr["frame"] == t for tr in o["track"])]
            images.append(Image.fromarray(frame))
            texts.append(caption(live, cfg) if live else "There is no object.")
    return images, texts


def pretrain_clip(world_dir: str | Path, out_dir: str | Path, steps: int = CLIP_STEPS, lr: float = 1e-3,
                  batch_size: int = 128, seed: int = 0):
    """Tiny CLIP trained contrastively on (frame, caption) pairs of the world's videos; returns its tower.

    The loss is CLIP's symmetric InfoNCE (Radford et al. 2021, arXiv 2103.00020, Fig. 3) with soft targets
    over identical captions in a batch (they are true matches too), as benchmarks/world_probe.py does for
    images. The BPE token-embedding table stays frozen: it is most of the parameters and made a step ~3x
    slower there (benchmarks/LOG.md, world probe).

    Args:
        world_dir: world folder (video_events.json, videos/).
        out_dir: folder for the open_clip checkpoint (random init written by `make_tiny_clip`).
        steps, lr, batch_size, seed: optimisation settings (AdamW, 30-step warm-up then cosine).

    Returns:
        The open_clip `VisionTransformer` (eval mode), ready for `clip_to_hf.attach_tower`.
    """
    import torch

    from mmpo.clip import contrastive_train, load_clip, make_tiny_clip

    scorer = load_clip(make_tiny_clip(out_dir, seed=seed, image_size=IMAGE_SIZE))
    model = scorer.model
    images, captions = frame_captions(world_dir)
    pix = torch.stack([scorer.preprocess(im) for im in images])
    contrastive_train(model, pix, scorer.tokenizer(captions), steps, lr=lr, batch_size=batch_size, seed=seed)
    return model.visual.eval()


def sft_config(model_dir: str | Path, data: str | Path, out_dir: str | Path, media_root: str | Path, seed: int = 0,
               steps: int = SFT_STEPS, lr: float = SFT_LR, batch_size: int = SFT_BATCH) -> TrainConfig:
    """TrainConfig for the video SFT: full fine-tune of LM + projector (tower frozen), answer-only NLL."""
    return cfgmod.from_dict(TrainConfig, {
        "stage": "sft", "output_dir": str(out_dir), "seed": seed,
        "model": {"path": str(model_dir), "num_frames": NUM_FRAMES, "device": "cpu"},
        "lora": {"enabled": False, "train_projector": True},
        "data": {"train": str(data), "media_root": str(media_root)},
        "lr": lr, "max_steps": steps, "batch_size": batch_size, "warmup_ratio": 0.1,
        "log_every": max(1, min(25, steps // 10)), "progress": False}, "video sft")


def train_video_model(world_dir: str | Path, out_dir: str | Path, seed: int = 0, steps: int = SFT_STEPS,
                      words: list[str] | None = None, lr: float = SFT_LR, batch_size: int = SFT_BATCH,
                      train_tower: bool = False, clip_steps: int = CLIP_STEPS,
                      feature_layer: int | None = None, captions: bool = CAPTIONS) -> Path:
    """Build and SFT the tiny video LLaVA on the world's video QA.

    Args:
        world_dir: world folder (world.json, sft_video.jsonl, videos/).
        out_dir: work folder: init/ (random checkpoint), sft_video_vh.jsonl, sft/ (the trainer's run dir).
        seed: model init and data order seed.
        steps: optimizer steps (batch `batch_size`).
        words: vocabulary (default: world.json `words`).
        lr: peak learning rate (warm-up 10% then cosine).
        batch_size: SFT samples per step.
        train_tower: also train the vision tower (default frozen, as LLaVA's SFT).
        clip_steps: contrastive CLIP pretraining steps on the world's frames (0 = random tower).
        feature_layer: tower layer for the projector (default: -1 with a pretrained CLIP, else FEATURE_LAYER).
        captions: add caption records to the SFT data.

    Returns:
        The trained checkpoint folder (`out_dir/sft/model`), loadable by `mmpo.models.load_model`.
    """
    from mmpo.models import load_model
    from mmpo.trainer import train

    world, out = Path(world_dir), Path(out_dir)
    words = words if words is not None else json.loads((world / "world.json").read_text())["words"]
    visual = pretrain_clip(world, out / "clip", steps=clip_steps, seed=seed) if clip_steps else None
    if feature_layer is None:
        feature_layer = -1 if visual is not None else FEATURE_LAYER
    init = make_video_model(out / "init", words, seed=seed, visual=visual, feature_layer=feature_layer)
    data = suffixed_sft(world, out / "sft_video_vh.jsonl", captions=captions)
    cfg = sft_config(init, data, out / "sft", world, seed, steps, lr, batch_size)
    model, processor = load_model(cfg.model, cfg.lora, trainable=True)
    if train_tower:
        model.model.vision_tower.requires_grad_(True)
    run = train(cfg, model=model, processor=processor)
    return run / "model"


def pami_pairs(sft_path: str | Path, media_root: str | Path, out_dir: str | Path, build: Callable[..., Path],
               num_candidates: int = PAMI_K, ops: list[str] | None = None, seed: int = 0) -> Path:
    """Conditional-media pairs with a bag of augmented clips, through the augmentation builder.

    Args:
        sft_path: SFT JSONL (e.g. `out_dir/sft_video_vh.jsonl` of `train_video_model`).
        media_root: folder the SFT media paths are relative to (the world folder).
        out_dir: builder output folder (pairs.jsonl, manifest.json).
        build: callable(**augment config fields) -> output folder; the demo passes
            `lambda **kw: data_builders.augment.build(AugmentConfig(**kw))`.
        num_candidates: K, the bag size.
        ops: video augmentation pool (default PAMI_OPS).
        seed: op sampling seed.

    Returns:
        The pairs JSONL path.
    """
    folder = build(in_sft=str(sft_path), media_root=str(media_root), out_dir=str(out_dir), seed=seed,
                   num_candidates=num_candidates, video_ops=list(ops or PAMI_OPS), num_frames=NUM_FRAMES,
                   progress=False, fresh=True)
    return Path(folder) / "pairs.jsonl"


def with_wrong_answers(pairs_path: str | Path, out_path: str | Path) -> Path:
    """Yes/no bag pairs with `rejected` = the opposite answer, so a dpo term can sit next to pami.

    PaMi reads only chosen and the bag (its *_rejected inputs are unused, mmpo/losses.py PaMiLoss), so one
    record serves both terms. Caption pairs have no single wrong answer and are left out.

    Args:
        pairs_path: pairs JSONL from `pami_pairs`.
        out_path: output JSONL.

    Returns:
        `out_path`.
    """
    rows = [json.loads(line) for line in Path(pairs_path).read_text().splitlines() if line.strip()]
    rows = [dict(r, rejected={"yes": "no", "no": "yes"}[r["chosen"]]) for r in rows if r["chosen"] in ("yes", "no")]
    Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(out_path)


def pami_config(model_dir: str | Path, pairs: str | Path, out_dir: str | Path, media_root: str | Path,
                seed: int = 0, steps: int = PAMI_STEPS, lr: float = PAMI_LR, batch_size: int = PAMI_BATCH,
                loss: list[dict] | None = None) -> TrainConfig:
    """TrainConfig for PaMi-VDPO: LoRA on the language model; the reference is the adapter switched off."""
    loss = loss or PAMI_LOSS
    return cfgmod.from_dict(TrainConfig, {
        "stage": "dpo", "output_dir": str(out_dir), "seed": seed,
        "model": {"path": str(model_dir), "num_frames": NUM_FRAMES, "device": "cpu"},
        "lora": {"enabled": True, "r": 16, "alpha": 32},
        "data": {"train": str(pairs), "media_root": str(media_root)},
        "loss": loss, "lr": lr, "max_steps": steps, "batch_size": batch_size, "warmup_ratio": 0.1,
        "log_every": max(1, min(10, steps // 10)), "progress": False}, "video pami")


def train_pami(model_dir: str | Path, pairs: str | Path, out_dir: str | Path, media_root: str | Path,
               seed: int = 0, steps: int = PAMI_STEPS, lr: float = PAMI_LR, loss: list[dict] | None = None) -> Path:
    """PaMi-VDPO (or any preference loss list) on top of the SFT video model.

    Args:
        model_dir: SFT checkpoint folder.
        pairs: pair JSONL (`pami_pairs`, or yes/no ground-truth pairs for plain DPO).
        out_dir: the trainer's run directory.
        media_root: folder the pairs' media paths are relative to.
        seed: data order seed.
        steps: optimizer steps.
        lr: peak learning rate.
        loss: loss terms (default PAMI_LOSS: pami + dpo; the pairs then need `with_wrong_answers`).

    Returns:
        The adapter folder (`out_dir/adapter`); load with ModelConfig(path=model_dir, adapter=...).
    """
    from mmpo.trainer import train

    run = train(pami_config(model_dir, pairs, out_dir, media_root, seed, steps, lr, loss=loss))
    return run / "adapter"
