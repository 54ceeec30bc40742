"""Experiment: which world + SFT recipe makes the tiny LLaVA hallucinate measurably, fast, on one CPU thread.

Pipeline (the demo's, with each stage timed):
1. build the image world (mmpo.demo.world) with the given knobs;
2. pretrain a tiny open_clip CLIP contrastively on the world's captions (mmpo.clip.make_tiny_clip);
3. convert its image tower to transformers (mmpo.demo.clip_to_hf), put it in a tiny LLaVA from the model
   factory (mmpo.models.tiny), freeze it, and cache its patch features once;
4. SFT only projector + language model on the world's SFT JSONL (loss on answer tokens), from cached features;
5. score POPE random / adversarial splits built by mmpo.eval.pope_build from annotations.json, by logits
   (yes vs no at the answer position), and a strict adversarial set (every negative an absent partner).
Finally the cached-feature path is checked against a plain LLaVA forward with pixel values, and the
counterfactual re-render (scene minus the asked object) is scored.

Usage (defaults = the best recipe so far, run H1 in benchmarks/LOG.md):
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/world_probe.py --tag H1
Prints one JSON line of results (and appends it to --results if given).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(1)  # DEMO-NOTES: 2 threads on the busy 2-core box made steps ~4x slower

from mmpo.demo.image_models import cache_features, lm_logits  # noqa: E402  (the demo's own, so the probe measures it)
from mmpo.demo.world import WorldConfig, build_world, caption, render_image  # noqa: E402
from mmpo.records import read_sft  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--tag", default="run"), a("--out", default="/tmp/world_probe"), a("--results", default="")
    a("--seed", type=int, default=0), a("--n-images", type=int, default=3000), a("--n-test", type=int, default=400)
    a("--co-prob", type=float, default=0.95), a("--test-co-prob", type=float, default=0.2)
    a("--size-min", type=int, default=14), a("--size-max", type=int, default=20)
    a("--noise", type=float, default=0.0), a("--occlusion", type=float, default=0.0)
    a("--min-objects", type=int, default=1), a("--max-objects", type=int, default=2)
    a("--qa-partner-frac", type=float, default=0.0), a("--caption-frac", type=float, default=0.2)
    a("--qa-per-image", type=int, default=4)
    a("--clip-steps", type=int, default=150), a("--clip-lr", type=float, default=1e-3)
    a("--clip-batch", type=int, default=128)
    a("--steps", type=int, default=700), a("--lr", type=float, default=1e-3), a("--batch", type=int, default=64)
    a("--feature-layer", type=int, default=-1), a("--eval-every", type=int, default=100)
    a("--sample-num", type=int, default=2), a("--no-clip-pretrain", action="store_true")
    a("--strategy", default="full", choices=["default", "full"])  # full: keep the CLS token as an image token
    a("--colour-mode", default="class", choices=["class", "random"])
    a("--partner-scale", type=float, default=0.4)
    a("--clip-cache", default="")  # reuse a pretrained open_clip state dict (exploration runs only)
    return p.parse_args(argv)


# -- stage 1-2: world and contrastive CLIP -----------------------------------------------------------

def pretrain_clip(scenes, cfg, out: Path, args) -> tuple[torch.nn.Module, dict]:
    """Tiny CLIP trained with the symmetric InfoNCE loss (Radford et al. 2021, Fig. 3 pseudo-code)."""
    from mmpo.clip import load_clip, make_tiny_clip

    t0 = time.time()
    scorer = load_clip(make_tiny_clip(out / "clip", seed=args.seed, image_size=cfg.image_size))
    model = scorer.model
    images = torch.stack([scorer.preprocess(render_image(sc, cfg)) for sc in scenes])
    texts = scorer.tokenizer([caption(sc["objects"], cfg) for sc in scenes])
    stats = {"clip_steps": args.clip_steps}
    if args.clip_cache and Path(args.clip_cache).exists():
        model.load_state_dict(torch.load(args.clip_cache))
        stats["clip_s"] = f"cached {args.clip_cache}"
        return model.visual.eval(), stats
    if args.no_clip_pretrain or args.clip_steps == 0:
        stats["clip_s"] = round(time.time() - t0, 1)
        return model.visual.eval(), stats
    from mmpo.demo.image_models import contrastive_train

    loss = contrastive_train(model, images, texts, args.clip_steps, lr=args.clip_lr, batch_size=args.clip_batch,
                             seed=args.seed, log=lambda line: print(line, flush=True))
    stats.update(clip_s=round(time.time() - t0, 1), clip_loss=round(loss, 3))
    if args.clip_cache:
        torch.save(model.state_dict(), args.clip_cache)
    return model.visual.eval(), stats


# -- stage 3: tiny LLaVA with the converted tower, cached features -----------------------------------

def make_llava(visual, words, out: Path, args):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmpo.demo.clip_to_hf import attach_tower
    from mmpo.models.tiny import make_tiny_model

    path = make_tiny_model("llava", out / "llava", words=words, seed=args.seed, image_size=64)
    model = LlavaForConditionalGeneration.from_pretrained(path)
    attach_tower(model, visual)
    model.config.vision_feature_layer = args.feature_layer
    processor = AutoProcessor.from_pretrained(path)
    if args.strategy == "full":  # CLS kept: (img/patch)^2 + 1 image tokens (processor adds num_additional=1)
        model.config.vision_feature_select_strategy = processor.vision_feature_select_strategy = "full"
        model.config.image_seq_length = model.config.image_seq_length + 1
    return model, processor


def encode(processor, prompt: str, answer: str | None, n_img: int) -> tuple[list[int], int]:
    """Token ids of the templated prompt (+ answer + EOS) with the image token expanded; returns (ids, prompt len)."""
    from mmpo.models.inputs import prompt_text

    tok = processor.tokenizer
    ids = tok(prompt_text(processor, prompt, "image"))["input_ids"]
    img = tok.convert_tokens_to_ids("<image>")
    k = ids.index(img)
    ids = ids[:k] + [img] * n_img + ids[k + 1:]
    n_prompt = len(ids)
    if answer is not None:
        ids = ids + tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids, n_prompt


def pad(seqs, value):
    L = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (L - len(s)) for s in seqs])


# -- stage 4-5: SFT and POPE-by-logits ---------------------------------------------------------------

def sft(model, processor, samples, feats, args, evaluate) -> dict:
    """Train projector + LM (tower frozen) on (image index, ids, prompt length) samples; returns timings/curve."""
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    pad_id = processor.tokenizer.pad_token_id
    rng = np.random.default_rng(args.seed)
    curve, t_train, t0 = [], 0.0, time.time()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = [samples[i] for i in rng.integers(len(samples), size=args.batch)]
        ids = pad([b[1] for b in batch], pad_id)
        attn = pad([[1] * len(b[1]) for b in batch], 0)
        labels = ids.clone()
        for r, b in enumerate(batch):
            labels[r, :b[2]] = -100  # loss on answer tokens (+ EOS) only, as LLaVA's SFT
        labels[attn == 0] = -100
        model.train()
        logits = lm_logits(model, ids, attn, feats[[b[0] for b in batch]])
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            t_train += time.time() - t0
            m = evaluate()
            m.update(step=step + 1, loss=round(loss.item(), 4), train_s=round(t_train, 1))
            curve.append(m)
            print(json.dumps(m), flush=True)
            t0 = time.time()
    return {"sft_s": round(t_train, 1), "curve": curve}


@torch.no_grad()
def yes_prob(model, processor, questions, feats, n_img: int) -> np.ndarray:
    """P(yes) / (P(yes)+P(no)) at the answer position for [(image index, question text)]."""
    tok = processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    model.eval()
    out = []
    for i in range(0, len(questions), 256):
        chunk = questions[i:i + 256]
        seqs = [encode(processor, q, None, n_img)[0] for _, q in chunk]
        L = max(map(len, seqs))
        ids = torch.tensor([[tok.pad_token_id] * (L - len(s)) + s for s in seqs])  # left pad: last = answer pos
        attn = (ids != tok.pad_token_id).long()
        lg = lm_logits(model, ids, attn, feats[[j for j, _ in chunk]])[:, -1]
        out.append(torch.sigmoid(lg[:, yes] - lg[:, no]))
    return torch.cat(out).numpy()


def pope_metrics(p_yes: np.ndarray, labels: list[str]) -> dict:
    """POPE metrics with "yes" as the positive class (AoiDragon/POPE evaluate.py)."""
    pred = p_yes > 0.5
    y = np.array([lab == "yes" for lab in labels])
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    f1 = 2 * prec * rec / max(prec + rec, 1e-9)
    return {"acc": round(float((pred == y).mean()), 4), "f1": round(f1, 4), "yes_ratio": round(float(pred.mean()), 4)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out) / args.tag
    cfg = WorldConfig(seed=args.seed, n_images=args.n_images, n_test_images=args.n_test, n_videos=0,
                      co_prob=args.co_prob, test_co_prob=args.test_co_prob, size_range=[args.size_min, args.size_max],
                      noise=args.noise, occlusion=args.occlusion, min_objects=args.min_objects,
                      max_objects=args.max_objects, qa_partner_frac=args.qa_partner_frac,
                      caption_frac=args.caption_frac, qa_per_image=args.qa_per_image,
                      colour_mode=args.colour_mode, partner_scale=args.partner_scale)
    t0 = time.time()
    info = build_world(cfg, out / "world", videos=False)
    scenes = json.loads((out / "world" / "scenes.json").read_text())
    res = {"tag": args.tag, "args": vars(args), "world_s": round(time.time() - t0, 1)}

    visual, clip_stats = pretrain_clip(scenes["train"], cfg, out, args)
    res.update(clip_stats)
    model, processor = make_llava(visual, info["words"], out, args)
    n_img = model.config.image_seq_length
    t0 = time.time()
    all_scenes = scenes["train"] + scenes["test"]
    index = {sc["file"]: i for i, sc in enumerate(all_scenes)}
    feats = cache_features(model, processor, [render_image(sc, cfg) for sc in all_scenes])
    res["cache_s"] = round(time.time() - t0, 1)

    samples = []
    for r in read_sft(out / "world" / "sft.jsonl"):
        ids, n_prompt = encode(processor, r.prompt, r.answer, n_img)
        samples.append((index[r.media[0]], ids, n_prompt))

    from mmpo.eval.pope_build import build, load_ground_truth

    gt = load_ground_truth(out / "world" / "annotations.json")
    n_elig = sum(len(im["objects"]) >= args.sample_num for im in gt)
    pope = build(gt, splits=("random", "adversarial"), sample_num=args.sample_num, img_num=n_elig, seed=args.seed)
    # strict adversarial: every (test image, absent partner of a present object) -> "no"; positives as POPE's
    objs = {sc["file"]: [o["cls"] for o in sc["objects"]] for sc in scenes["test"]}
    strict = [(f, c) for f, present in objs.items() for c in {dict(map(tuple, cfg.pairs + [p[::-1] for p in cfg.pairs]))
                                                              .get(o) for o in present} - set(present) - {None}]
    res["n_questions"] = {s: len(q) for s, q in pope.items()} | {"strict_partner_no": len(strict)}

    def evaluate() -> dict:
        m = {}
        for split, qs in pope.items():
            p = yes_prob(model, processor, [(index[q.image], q.text) for q in qs], feats, n_img)
            m[split] = pope_metrics(p, [q.label for q in qs])
        p = yes_prob(model, processor, [(index[f], info["image_question"].format(c)) for f, c in strict], feats, n_img)
        m["strict_partner_yes_rate"] = round(float((p > 0.5).mean()), 4)
        m["gap_f1"] = round(m["random"]["f1"] - m["adversarial"]["f1"], 4)
        return m

    res.update(sft(model, processor, samples, feats, args, evaluate))
    res["final"] = res["curve"][-1]
    res.update(check_paths(model, processor, scenes["test"][:8], cfg, info, n_img))
    res["counterfactual"] = counterfactual(model, processor, scenes["test"], cfg, info, n_img)
    print(json.dumps({k: v for k, v in res.items() if k not in ("curve", "args")}))
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(res) + "\n")
    return res


@torch.no_grad()
def check_paths(model, processor, scenes, cfg, info, n_img) -> dict:
    """Max |logit diff| between the cached-feature path and a plain LLaVA forward with pixel values."""
    model.eval()
    imgs = [render_image(sc, cfg) for sc in scenes]
    q = info["image_question"].format(scenes[0]["objects"][0]["cls"])
    feats = cache_features(model, processor, imgs)
    seqs = [encode(processor, q, None, n_img)[0] for _ in imgs]
    ids = torch.tensor(seqs)
    a = lm_logits(model, ids, torch.ones_like(ids), feats)[:, -1]
    from mmpo.models.inputs import prompt_text

    b = processor(images=imgs, text=[prompt_text(processor, q, "image")] * len(imgs), return_tensors="pt")
    plain = model(**b).logits[:, -1]
    return {"path_max_abs_diff": float((a - plain).abs().max())}


@torch.no_grad()
def counterfactual(model, processor, scenes, cfg, info, n_img) -> dict:
    """Scene re-rendered without the asked object: P(yes) should drop (a DPO rejected-media candidate)."""
    orig, cf, qs = [], [], []
    for sc in scenes[:100]:
        cls = sc["objects"][0]["cls"]
        orig.append(render_image(sc, cfg))
        cf.append(render_image(sc, cfg, drop=cls))
        qs.append(info["image_question"].format(cls))
        diff = np.asarray(orig[-1]).astype(int) - np.asarray(cf[-1]).astype(int)
        assert diff.any(), "counterfactual identical to the original"
    f = cache_features(model, processor, orig + cf)
    n = len(orig)
    p = yes_prob(model, processor, [(i, q) for i, q in enumerate(qs)] + [(n + i, q) for i, q in enumerate(qs)], f, n_img)
    return {"p_yes_original": round(float(p[:n].mean()), 4), "p_yes_counterfactual": round(float(p[n:].mean()), 4)}


if __name__ == "__main__":
    main()
