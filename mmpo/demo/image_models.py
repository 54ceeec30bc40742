"""The demo's image world models: a contrastive tiny CLIP and a tiny LLaVA built on its tower, trained by SFT.

Recipe (benchmarks/LOG.md, "World probe", run H1): class-coloured shapes; open_clip tiny CLIP trained
150 steps with the symmetric InfoNCE loss on captions (Radford et al. 2021); its image tower converted to
transformers (`clip_to_hf.attach_tower`) inside the model factory's tiny LLaVA, frozen, with the CLS token
kept (17 image tokens, last layer); SFT of projector + language model on the world's answers for 700
steps at batch 64, lr 1e-3. Without the contrastive tower the LLaVA stayed at chance (runs A, B, C2).

SFT runs from cached tower features: the tower is frozen, so its outputs are computed once per image and
the projector + language model train on them (`lm_logits` equals a plain pixel forward: max |diff| 0.0 in
the probe). About 2-3 minutes on one CPU thread; the saved checkpoint is an ordinary LLaVA folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmpo.demo.world import WorldConfig, caption, render_image
from mmpo.records import read_sft

CLIP_STEPS, CLIP_LR, CLIP_BATCH = 150, 1e-3, 128
SFT_STEPS, SFT_LR, SFT_BATCH = 700, 1e-3, 64


def _cosine_lr(base: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay (the CLIP and SFT schedule of the world models)."""
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))


def contrastive_train(model, pixels: torch.Tensor, tokens: torch.Tensor, steps: int, lr: float = 1e-3,
                      batch_size: int = 128, seed: int = 0, log=None) -> float:
    """Train an open_clip model with CLIP's symmetric InfoNCE loss (Radford et al. 2021, arXiv 2103.00020, Fig. 3).

    Identical captions in a batch are true matches too, so the target is spread evenly over them. The BPE
    token-embedding table stays frozen: it is ~94% of a tiny CLIP's parameters and tripled the step time
    (benchmarks/LOG.md, world probe), while a small world uses a few dozen of its rows.

    Args:
        model: an open_clip CLIP (trained in place, left in eval mode).
        pixels: [N, 3, H, W] preprocessed images.
        tokens: [N, context] tokenised captions, row i describing image i.
        steps: AdamW steps (weight decay 0.1, 30-step warm-up then cosine).
        lr: peak learning rate.
        batch_size: pairs per step, drawn with replacement.
        seed: batch-sampling seed.
        log: optional callable for progress lines.

    Returns:
        The last step's loss.
    """
    model.train()
    model.token_embedding.weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(lr, step, steps, warmup=30)
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        fi = model.encode_image(pixels[idx], normalize=True)
        ft = model.encode_text(tokens[idx], normalize=True)
        logits = model.logit_scale.exp() * fi @ ft.t()
        same = (tokens[idx][:, None, :] == tokens[idx][None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = -0.5 * ((target * logits.log_softmax(1)).sum(1).mean() + (target * logits.t().log_softmax(1)).sum(1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"  clip step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    return loss.item()


def pretrain_clip(scenes: list[dict], cfg: WorldConfig, out_dir: Path, steps: int = CLIP_STEPS,
                  seed: int = 0, log=print) -> Path:
    """Train a tiny open_clip CLIP on (image, caption) pairs of the world and save it (local-dir format).

    Args:
        scenes: training scenes (`scenes.json["train"]`).
        cfg: the world config (rendering).
        out_dir: checkpoint folder (`mmpo.clip.load_clip` reads it).
        steps: optimizer steps at batch 128.
        seed: init and batch-sampling seed.
        log: progress printer.

    Returns:
        `out_dir`.
    """
    from mmpo.clip import load_clip, make_tiny_clip, save_weights

    scorer = load_clip(make_tiny_clip(out_dir, seed=seed, image_size=cfg.image_size))
    model = scorer.model
    images = torch.stack([scorer.preprocess(render_image(sc, cfg)) for sc in scenes])
    texts = scorer.tokenizer([caption(sc["objects"], cfg) for sc in scenes])
    contrastive_train(model, images, texts, steps, lr=CLIP_LR, batch_size=CLIP_BATCH, seed=seed, log=log)
    save_weights(model, out_dir)
    return Path(out_dir)


def assemble_llava(clip_dir: Path, words: list[str], out_dir: Path, seed: int = 0):
    """A tiny LLaVA from the model factory with the CLIP's image tower (CLS kept, last layer).

    Returns:
        (model, processor), not yet saved.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmpo.clip import load_clip
    from mmpo.demo.clip_to_hf import attach_tower
    from mmpo.models.tiny import make_tiny_model

    path = make_tiny_model("llava", out_dir, words=words, seed=seed, image_size=64)
    model = LlavaForConditionalGeneration.from_pretrained(path)
    attach_tower(model, load_clip(clip_dir).model.visual)
    processor = AutoProcessor.from_pretrained(path)
    model.config.vision_feature_layer = -1
    # CLS kept as an image token: (64/16)^2 + 1 = 17 tokens (the processor adds num_additional_image_tokens=1)
    model.config.vision_feature_select_strategy = processor.vision_feature_select_strategy = "full"
    model.config.image_seq_length += 1
    return model, processor


@torch.no_grad()
def cache_features(model, processor, images, batch: int = 256) -> torch.Tensor:
    """The frozen tower's features at `vision_feature_layer`, what the projector consumes."""
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    skip = 1 if model.config.vision_feature_select_strategy == "default" else 0
    out = []
    for i in range(0, len(images), batch):
        pixels = processor.image_processor(images[i:i + batch], return_tensors="pt")["pixel_values"]
        out.append(tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, skip:])
    return torch.cat(out)


def lm_logits(model, ids, attn, feats):
    """LLaVA logits from cached features: image-token embeddings <- projector(features)."""
    emb = model.get_input_embeddings()(ids)
    is_img = (ids == model.config.image_token_id).unsqueeze(-1)
    emb = emb.masked_scatter(is_img, model.model.multi_modal_projector(feats).to(emb.dtype))
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    hidden = model.model.language_model(inputs_embeds=emb, attention_mask=attn, position_ids=pos).last_hidden_state
    return model.lm_head(hidden)


def _encode(processor, prompt: str, answer: str, n_img: int) -> tuple[list[int], int]:
    from mmpo.models.inputs import prompt_text

    tok = processor.tokenizer
    ids = tok(prompt_text(processor, prompt, "image"))["input_ids"]
    k = ids.index(tok.convert_tokens_to_ids("<image>"))
    ids = ids[:k] + [ids[k]] * n_img + ids[k + 1:]  # the processor's expansion of the image placeholder
    n_prompt = len(ids)
    return ids + tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], n_prompt


def sft_cached(model, processor, sft_path: Path, world_dir: Path, steps: int = SFT_STEPS, seed: int = 0,
               log=print) -> list[float]:
    """Answer-only SFT of projector + language model from cached tower features (tower frozen).

    Returns:
        The loss every 50 steps.
    """
    from PIL import Image

    records = read_sft(sft_path)
    files = sorted({r.media[0] for r in records})
    index = {f: i for i, f in enumerate(files)}
    feats = cache_features(model, processor, [Image.open(world_dir / f).convert("RGB") for f in files])
    n_img = model.config.image_seq_length
    samples = [(index[r.media[0]], *_encode(processor, r.prompt, r.answer, n_img)) for r in records]
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=SFT_LR, weight_decay=0.0)
    pad_id, rng, curve = processor.tokenizer.pad_token_id, np.random.default_rng(seed), []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine_lr(SFT_LR, step, steps, 100)
        batch = [samples[i] for i in rng.integers(len(samples), size=SFT_BATCH)]
        width = max(len(b[1]) for b in batch)
        ids = torch.tensor([b[1] + [pad_id] * (width - len(b[1])) for b in batch])
        attn = torch.tensor([[1] * len(b[1]) + [0] * (width - len(b[1])) for b in batch])
        labels = ids.masked_fill(attn == 0, -100)
        for row, b in enumerate(batch):
            labels[row, :b[2]] = -100  # loss on answer tokens (+ EOS) only
        logits = lm_logits(model, ids, attn, feats[[b[0] for b in batch]])
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            curve.append(round(loss.item(), 4))
            log(f"  sft step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()
    return curve


def train_image_models(world_dir: Path, out_dir: Path, cfg: WorldConfig, seed: int = 0,
                       clip_steps: int = CLIP_STEPS, sft_steps: int = SFT_STEPS, log=print) -> dict[str, Path]:
    """The whole from-scratch path: CLIP, LLaVA assembly, cached-feature SFT, saved checkpoints.

    Returns:
        {"clip": CLIP folder, "llava": SFT LLaVA folder}.
    """
    torch.manual_seed(seed)
    info = json.loads((world_dir / "world.json").read_text())
    scenes = json.loads((world_dir / "scenes.json").read_text())
    log("training the tiny CLIP (contrastive, world captions)")
    clip_dir = pretrain_clip(scenes["train"], cfg, out_dir / "clip", steps=clip_steps, seed=seed, log=log)
    model, processor = assemble_llava(clip_dir, info["words"], out_dir / "llava", seed=seed)
    log("SFT of the tiny LLaVA (projector + language model, tower frozen)")
    curve = sft_cached(model, processor, world_dir / "sft.jsonl", world_dir, steps=sft_steps, seed=seed, log=log)
    model.save_pretrained(out_dir / "llava")
    processor.save_pretrained(out_dir / "llava")
    (out_dir / "llava" / "sft_curve.json").write_text(json.dumps(curve))
    return {"clip": clip_dir, "llava": out_dir / "llava"}
