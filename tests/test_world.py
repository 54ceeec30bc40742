"""The synthetic world: determinism, ground truth that matches the pixels, the co-occurrence knob, videos
and their events, SFT / VideoHallucer formats; and the open_clip -> transformers tower conversion."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from mmpo.demo import world as W
from mmpo.records import read_sft


def small_cfg(**kw) -> W.WorldConfig:
    base = dict(seed=3, n_images=40, n_test_images=20, n_videos=3, occlusion=0.3)
    return W.WorldConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = small_cfg()
    return cfg, out, W.build_world(cfg, out)


def test_same_seed_same_world_other_seed_differs(tmp_path):
    a, b, c = small_cfg(n_videos=0, noise=12.0), small_cfg(n_videos=0, noise=12.0), small_cfg(n_videos=0, noise=12.0, seed=4)
    sa, sb, sc = W.make_scenes(a, "train"), W.make_scenes(b, "train"), W.make_scenes(c, "train")
    assert sa == sb and sa != sc
    for x, y in zip(sa[:5], sb[:5], strict=True):
        assert np.array_equal(np.asarray(W.render_image(x, a)), np.asarray(W.render_image(y, b)))
    W.write_sft(sa, a, tmp_path / "a.jsonl")
    W.write_sft(sb, b, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_annotations_match_pixels(built):
    from PIL import Image

    cfg, out, _ = built
    coco = json.loads((out / "annotations.json").read_text())
    assert {c["name"] for c in coco["categories"]} == set(cfg.classes)
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    assert len(files) == cfg.n_test_images and coco["annotations"]
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        px = np.asarray(Image.open(out / files[ann["image_id"]]).convert("RGB")).astype(int)
        crop = px[y:y + h, x:x + w]
        # noise 0: the object's own colour covers exactly `area` pixels of its box, and touches all 4 sides
        own = (crop == W.COLOURS[ann["colour"]]).all(-1)
        assert own.sum() == ann["area"] > 0
        assert own[0].any() and own[-1].any() and own[:, 0].any() and own[:, -1].any()
    # an image region with no annotation is white
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    px = np.asarray(Image.open(out / files[1]).convert("RGB"))
    mask = np.ones(px.shape[:2], bool)
    for a in first:
        x, y, w, h = a["bbox"]
        mask[y:y + h, x:x + w] = False
    grey = (px == W.OCCLUDER_RGB).all(-1)
    assert (px[mask & ~grey] == 255).all()


@pytest.mark.parametrize("p", [0.9, 0.3])
def test_co_occurrence_rate_follows_knob(p):
    # one primary object per scene, so P(partner present) is exactly the knob
    cfg = small_cfg(co_prob=p, min_objects=1, max_objects=1, n_images=1500)
    scenes = W.make_scenes(cfg, "train")
    hits = [W.partner_of(sc["objects"][0]["cls"], cfg) in {o["cls"] for o in sc["objects"]} for sc in scenes]
    assert abs(np.mean(hits) - p) < 0.04


def test_counterfactual_changes_only_the_dropped_object():
    cfg = small_cfg(noise=10.0)
    sc = next(s for s in W.make_scenes(cfg, "train") if len(s["objects"]) >= 2)
    obj = sc["objects"][0]
    a = np.asarray(W.render_image(sc, cfg)).astype(int)
    b = np.asarray(W.render_image(sc, cfg, drop=obj["cls"])).astype(int)
    changed = np.nonzero((a != b).any(-1))
    assert len(changed[0]) > 0
    ys, xs = changed
    assert xs.min() >= obj["x"] and xs.max() < obj["x"] + obj["size"]
    assert ys.min() >= obj["y"] and ys.max() < obj["y"] + obj["size"]


def test_videos_decode_and_events_match_tracks(built):
    from decord import VideoReader, cpu

    cfg, out, _ = built
    gts = json.loads((out / "video_events.json").read_text())
    assert len(gts) == cfg.n_videos
    for gt in gts:
        vr = VideoReader(str(out / gt["video"]), ctx=cpu(0))
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
        assert frames.shape == (cfg.frames, cfg.video_height, cfg.video_width, 3)
        appear = {e["object"]: e["frame"] for e in gt["events"] if e["type"] == "appear"}
        gone = {e["object"]: e["frame"] for e in gt["events"] if e["type"] == "disappear"}
        for i, obj in enumerate(gt["objects"]):
            ts = [t["frame"] for t in obj["track"]]
            assert ts == list(range(appear[i], gone.get(i, cfg.frames)))
            t0 = obj["track"][0]
            x, y, w, h = t0["bbox"]
            if t0["visible_area"] > 0.5 * w * h:  # mostly visible: the decoded box is far from white
                assert frames[t0["frame"], y:y + h, x:x + w].mean() < 235
        assert gt["order"] == [gt["objects"][i]["cls"] for i in sorted(appear, key=appear.get)]
        assert len(set(appear.values())) == len(appear)


def test_sft_records_validate_and_negatives_follow_knob(built, tmp_path):
    cfg, out, info = built
    recs = read_sft(out / "sft.jsonl", media_root=out)
    assert recs and {r.media_type for r in recs} == {"image"}
    kinds = {r.meta["kind"] for r in recs}
    assert kinds == {"qa", "caption"}
    scenes = json.loads((out / "scenes.json").read_text())["train"]
    present = {sc["file"]: {o["cls"] for o in sc["objects"]} for sc in scenes}
    for r in recs:
        if r.meta["kind"] == "qa":
            assert r.answer == ("yes" if r.meta["object"] in present[r.media[0]] else "no")
    # qa_partner_frac 0: no negative is ever an absent partner; 1: every negative is one when one exists
    for frac, want in ((0.0, False), (1.0, True)):
        c = dataclasses.replace(cfg, qa_partner_frac=frac, n_images=200)
        sc = W.make_scenes(c, "train")
        W.write_sft(sc, c, tmp_path / "s.jsonl")
        pres = {s["file"]: {o["cls"] for o in s["objects"]} for s in sc}
        for r in read_sft(tmp_path / "s.jsonl"):
            if r.answer == "no":
                mates = {W.partner_of(o, c) for o in pres[r.media[0]]} - pres[r.media[0]]
                if mates:
                    assert (r.meta["object"] in mates) is want
    video = read_sft(out / "sft_video.jsonl", media_root=out)
    assert video and all(r.media_type == "video" and r.answer in ("yes", "no") for r in video)


def test_words_cover_every_text(built):
    cfg, out, info = built
    words = {w.lower() for w in info["words"]}
    texts = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    texts += [json.loads(line) for line in (out / "sft_video.jsonl").read_text().splitlines()]
    for t in texts:
        for tok in re.findall(r"\w+|[^\w\s]", t["prompt"] + " " + t["answer"]):
            assert tok.lower() in words, tok


def test_videohallucer_files_have_reference_format(built):
    cfg, out, _ = built
    gts = {g["video"].split("/")[-1]: g for g in json.loads((out / "video_events.json").read_text())}
    for name in ("object_relation", "temporal"):
        pairs = json.loads((out / "videohallucer" / name / f"{name}.json").read_text())
        assert pairs
        for p in pairs:
            assert set(p) == {"basic", "hallucination", "type"}
            for side, ans in (("basic", "yes"), ("hallucination", "no")):
                assert set(p[side]) == {"video", "question", "answer"} and p[side]["answer"] == ans
                assert p[side]["video"] in gts and p[side]["question"].endswith("?")
            gt = gts[p["basic"]["video"]]
            if name == "temporal":
                assert p["type"] == "temporal_relative"
                a, b = re.match(r"Does the (\w+) appear before the (\w+)\?", p["basic"]["question"]).groups()
                assert gt["order"].index(a) < gt["order"].index(b)
                assert p["hallucination"]["question"] == W.ORDER_Q.format(b, a)
            else:
                assert p["type"] in ("subject", "object")
                neg = re.match(r"Is there a (\w+) in the video\?", p["hallucination"]["question"]).group(1)
                assert neg not in gt["order"]


def _random_open_clip_tower():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    v = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=2, mlp_ratio=2.0, output_dim=32)
    with torch.no_grad():  # move LayerNorms and biases off their init so a swapped name would show
        for m in v.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
            if isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_bias.normal_(0.0, 0.2)
    return v.eval()


def test_clip_to_hf_hidden_states_match():
    from mmpo.demo.clip_to_hf import convert_state_dict, to_hf_vision_model

    v = _random_open_clip_tower()
    hf = to_hf_vision_model(v)
    assert hf.config.hidden_act == "gelu"
    x = torch.randn(2, 3, 32, 32)
    caught = []
    hooks = [blk.register_forward_hook(lambda m, i, o: caught.append(o)) for blk in v.transformer.resblocks]
    with torch.no_grad():
        pooled = v(x)
        out = hf(pixel_values=x, output_hidden_states=True)
    for h in hooks:
        h.remove()
    for ours, theirs in zip(out.hidden_states[1:], caught, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-5)
    proj = convert_state_dict(v)["visual_projection.weight"]
    assert torch.allclose(out.pooler_output @ proj.t(), pooled, atol=1e-5)


def test_attach_tower_into_tiny_llava(tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mmpo.demo.clip_to_hf import attach_tower
    from mmpo.models.tiny import make_tiny_model

    v = _random_open_clip_tower()
    model = LlavaForConditionalGeneration.from_pretrained(make_tiny_model("llava", tmp_path / "m", image_size=32))
    attach_tower(model, v)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = model.model.vision_tower(pixel_values=x).pooler_output
        v.output_tokens = False
        want = v.ln_post(v.transformer(v.ln_pre(_embed(v, x))))[:, 0]
    assert torch.allclose(got, want, atol=1e-5)


def _embed(v, x):
    t = v.conv1(x).flatten(2).transpose(1, 2)
    cls = v.class_embedding.expand(t.shape[0], 1, -1)
    return torch.cat([cls, t], 1) + v.positional_embedding


def test_partner_scale_and_class_colours():
    cfg = small_cfg(co_prob=1.0, min_objects=1, max_objects=1, partner_scale=0.5, n_images=50)
    for sc in W.make_scenes(cfg, "train"):
        primary, partner = sc["objects"]
        assert primary["size"] >= cfg.size_range[0]
        assert partner["size"] <= round(cfg.size_range[1] * 0.5)
        assert all(o["colour"] == W.CLASS_COLOURS[o["cls"]] for o in sc["objects"])
    rnd = W.make_scenes(dataclasses.replace(cfg, colour_mode="random"), "train")
    assert any(o["colour"] != W.CLASS_COLOURS[o["cls"]] for sc in rnd for o in sc["objects"])


# -- the video world's temporal prior ------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.95, 0.5, 0.0])
def test_temporal_prior_follows_knob(p):
    """Among videos holding both objects of a pair, the first of the pair enters first with probability p."""
    cfg = small_cfg(co_prob=1.0, order_prob=p)
    canonical = []
    for seed in range(600):
        objs = W.sample_video(cfg, np.random.default_rng(seed))
        enter = {o["cls"]: o["appear"] for o in objs}
        canonical += [enter[a] < enter[b] for a, b in cfg.pairs if a in enter and b in enter]
    assert len(canonical) > 500 and abs(np.mean(canonical) - p) < 0.04


def test_video_windows_are_ordered_and_short():
    """Objects enter at least 2 frames apart, one at frame 0, and each stays `video_linger` frames past the next
    entrance (the last one to the end); at most `max_video_objects` objects."""
    for linger in (0, 1):
        cfg = small_cfg(video_linger=linger)
        for seed in range(200):
            objs = sorted(W.sample_video(cfg, np.random.default_rng(seed)), key=lambda o: o["appear"])
            assert 2 <= len(objs) <= cfg.max_video_objects and objs[0]["appear"] == 0
            for a, b in zip(objs, objs[1:]):
                assert b["appear"] - a["appear"] >= 2 and a["disappear"] == b["appear"] + linger
            assert objs[-1]["disappear"] == cfg.frames


def test_video_sft_order_questions_and_captions(built):
    cfg, out, _ = built
    gts = {g["video"]: g for g in json.loads((out / "video_events.json").read_text())}
    recs = read_sft(out / "sft_video.jsonl", media_root=out)
    order = [r for r in recs if r.meta["kind"] == "order"]
    assert order and {r.answer for r in order} == {"yes", "no"}
    for r in order:
        x, y = re.match(r"Does the (\w+) appear before the (\w+)\?", r.prompt).groups()
        seq = gts[r.media[0]]["order"]
        assert r.answer == ("yes" if seq.index(x) < seq.index(y) else "no")
    assert W.video_caption(["dot", "bar"], {"dot": "brown", "bar": "purple"}) == \
        "First a brown dot appears, then a purple bar."


def test_temporal_pairs_ask_the_pair_and_tag_the_prior(tmp_path):
    """Temporal pairs ask about the video's co-occurring pair when it has one; prior.json says whether the true
    order is the canonical one ("prior"), the other one ("counter") or not about a pair ("none")."""
    cfg = small_cfg(n_videos=60, co_prob=0.6, order_prob=0.5)
    gts = W.make_video_world(cfg, tmp_path)
    counts = W.write_videohallucer(gts, cfg, tmp_path / "vh")
    pairs = json.loads((tmp_path / "vh" / "temporal" / "temporal.json").read_text())
    tags = json.loads((tmp_path / "vh" / "temporal" / "prior.json").read_text())
    assert len(tags) == len(pairs) == counts["temporal"] and {"prior", "counter"} <= set(tags)
    by_video = {g["video"].split("/")[-1]: g["order"] for g in gts}
    for p, tag in zip(pairs, tags):
        x, y = re.match(r"Does the (\w+) appear before the (\w+)\?", p["basic"]["question"]).groups()
        seq = by_video[p["basic"]["video"]]
        assert seq.index(x) < seq.index(y)
        has_pair = any(a in seq and b in seq for a, b in cfg.pairs)
        assert (tag != "none") == has_pair  # the pair is asked whenever the video has one
        assert tag == {"none": "none", True: "prior", False: "counter"}[
            "none" if W.partner_of(x, cfg) != y else W.canonical_first(x, cfg)]


def test_caption_pairs_add_exactly_one_absent_partner(built):
    """Caption-DPO's pairs: chosen = the true caption, rejected = it plus one absent co-occurring partner."""
    from mmpo.demo.pairs import caption_pairs

    cfg, root, _ = built
    scenes = json.loads((root / "scenes.json").read_text())["train"]
    by_file = {sc["file"]: sc for sc in scenes}
    pairs = caption_pairs(scenes, cfg)
    assert pairs and len(pairs) < len(scenes)  # only scenes missing a partner
    for p in pairs:
        sc = by_file[p.media[0]]
        present = {o["cls"] for o in sc["objects"]}
        fake = p.meta["hallucinated"]
        assert fake not in present and fake in {W.partner_of(c, cfg) for c in present}
        assert p.chosen == W.caption(sc["objects"], cfg) and p.prompt == W.CAPTION_Q
        named = set(re.findall(r"\b(" + "|".join(cfg.classes) + r")\b", p.rejected))
        assert named == present | {fake} and fake not in p.chosen
