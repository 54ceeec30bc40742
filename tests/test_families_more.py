"""The new families' user settings and edges: image resolution (`model.min_pixels` / `max_pixels` /
`image_longest_edge`) on shrunk real-format Qwen-VL and SmolVLM checkpoints, checked against the processor's own
encoding; several images in the CLIP-based builders."""

import json

import numpy as np
import pytest
from helpers import real_format_model
from PIL import Image

from mmpo.batches import PairCollator
from mmpo.config import ConfigError, ModelConfig
from mmpo.lengths import MediaTokens, record_length
from mmpo.models import load_model
from mmpo.records import PairRecord, read_pairs, write_jsonl

SMALLER = {"qwen2_5_vl": dict(max_pixels=2000), "qwen3_vl": dict(max_pixels=2000),
           "idefics3": dict(image_longest_edge=64)}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("families_more")
    return {f: real_format_model(f, root) for f in SMALLER}


def _one_image_record(root):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (84, 112, 3), dtype=np.uint8)).save(root / "img/a.png")
    rec = PairRecord(id="a", media=("img/a.png",), media_type="image", prompt="What is it?", chosen="A cat.",
                     rejected="A dog.")
    write_jsonl(root / "p.jsonl", [rec])
    return read_pairs(root / "p.jsonl", root)[0]


def _image_tokens(proc, batch) -> int:
    ids = batch.prompt["input_ids"][0][batch.prompt["attention_mask"][0].bool()]
    return int((ids == proc.tokenizer.convert_tokens_to_ids(proc.image_token)).sum())


def _lengths(path, root, rec, **settings):
    """(pre-flight length, collated prompt+answer length, image tokens in the collated prompt)."""
    _, proc = load_model(ModelConfig(path=str(path), device="cpu", **settings))
    batch = PairCollator(proc, str(root))([rec])
    n_answer = max(int(batch.chosen["attention_mask"].sum()), int(batch.rejected["attention_mask"].sum()))
    collated = int(batch.prompt["attention_mask"].sum()) + n_answer
    return record_length(rec, proc, MediaTokens(proc, 8), root), collated, _image_tokens(proc, batch)


@pytest.mark.parametrize("family", list(SMALLER))
def test_a_smaller_image_size_gives_fewer_tokens_and_the_preflight_counts_them(paths, family, tmp_path):
    rec = _one_image_record(tmp_path)
    pre_default, collated_default, image_default = _lengths(paths[family], tmp_path, rec)
    pre_small, collated_small, image_small = _lengths(paths[family], tmp_path, rec, **SMALLER[family])
    assert pre_default == collated_default and pre_small == collated_small
    assert image_small < image_default
    if family != "idefics3":  # Idefics3 also drops the <row_i_col_j> tile tags of the tiles it no longer cuts
        assert collated_default - collated_small == image_default - image_small  # only the image tokens changed


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_max_pixels_matches_qwens_own_resize_rule_and_leaves_video_alone(paths, family):
    """Qwen's own `smart_resize` (factor = patch size * merge size of the checkpoint) decides the grid."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    model, proc = load_model(ModelConfig(path=str(paths[family]), device="cpu", min_pixels=500, max_pixels=2000))
    _, default = load_model(ModelConfig(path=str(paths[family]), device="cpu"))
    ip = proc.image_processor
    factor = ip.patch_size * ip.merge_size
    h, w = smart_resize(84, 112, factor=factor, min_pixels=500, max_pixels=2000)
    grid = proc.image_processor(images=[Image.new("RGB", (112, 84))], return_tensors="pt")["image_grid_thw"]
    assert grid[0].tolist() == [1, h // ip.patch_size, w // ip.patch_size]
    assert dict(proc.video_processor.size) == dict(default.video_processor.size)


def test_a_resolution_setting_the_family_does_not_take_is_refused(paths):
    with pytest.raises(ValueError, match=r"model.max_pixels: idefics3 .*qwen2_5_vl: min_pixels/max_pixels"):
        load_model(ModelConfig(path=str(paths["idefics3"]), device="cpu", max_pixels=2000))
    with pytest.raises(ValueError, match="model.image_longest_edge: qwen3_vl"):
        load_model(ModelConfig(path=str(paths["qwen3_vl"]), device="cpu", image_longest_edge=64))
    with pytest.raises(ConfigError, match="min_pixels"):
        ModelConfig(min_pixels=5000, max_pixels=2000)


# -- several images in the CLIP-based builders ------------------------------------------------------

@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """Image SFT records with two images each, and a tiny CLIP."""
    from helpers import color_image

    from mmpo.clip import make_tiny_clip
    from mmpo.records import SFTRecord

    root = tmp_path_factory.mktemp("two_images")
    (root / "img").mkdir()
    recs = []
    for i in range(3):
        for j, color in enumerate(("red", "blue")):
            color_image(color, size=48 + 8 * j, seed=i).save(root / f"img/{i}_{j}.png")
        recs.append(SFTRecord(f"s{i}", (f"img/{i}_0.png", f"img/{i}_1.png"), "image",
                              "Which picture is red?", "The first one is red."))
    write_jsonl(root / "sft.jsonl", recs)
    return {"root": root, "sft": root / "sft.jsonl", "clip": make_tiny_clip(root / "clip")}


def test_augment_augments_every_image_and_scores_them_one_for_one(two_images):
    """Materialised rejected media: one file per image, each `augment(image_i, spec)` (the trainer's rule for a
    bag); the CLIP prefilter's similarity is the mean of each image's cosine to its own augmented copy."""
    from mmpo.builders.augment import AugmentConfig
    from mmpo.builders.augment import build as build_augment
    from mmpo.clip import load_clip
    from mmpo.config import load
    from mmpo.media import augment, load_media
    from mmpo.records import AugSpec

    root = two_images["root"]
    cfg = load(AugmentConfig, None, [f"in_sft={two_images['sft']}", f"out_dir={root / 'aug'}", "progress=false",
                                     "materialize=true", f"clip_model={two_images['clip']}", "max_similarity=1.01"])
    out = build_augment(cfg)
    pairs = read_pairs(out / "pairs.jsonl", media_root=root)
    assert len(pairs) == 3
    scorer = load_clip(str(two_images["clip"]))
    for p in pairs:
        assert len(p.rejected_media) == 2
        spec = AugSpec(**p.meta["rejected_spec"])
        originals = load_media(root, p.media, "image")
        written = load_media(root, p.rejected_media, "image")
        for original, got in zip(originals, written, strict=True):
            assert np.array_equal(np.asarray(got), np.asarray(augment(original, spec)))
        a, b = scorer.encode_images(originals), scorer.encode_images(written)
        assert p.scores["clip_sim"][0] == pytest.approx(float((a * b).sum(-1).mean()), abs=1e-5)


def test_difficulty_clip_score_over_several_images_is_the_mean_over_images_and_sentences(two_images):
    from mmpo.builders.difficulty import clip_scores
    from mmpo.clip import load_clip
    from mmpo.media import load_media

    root = two_images["root"]
    scorer = load_clip(str(two_images["clip"]))
    images = load_media(root, ("img/0_0.png", "img/0_1.png"), "image")
    rec = PairRecord(id="d", media=("img/0_0.png", "img/0_1.png"), media_type="image", prompt="?",
                     chosen="The first one is red. The second one is blue.", rejected="Both are green.")
    (cw, cl), = clip_scores(scorer, [(rec, images, images)])
    img = scorer.encode_images(images)
    for score, text in ((cw, rec.chosen), (cl, rec.rejected)):
        txt = scorer.encode_texts(scorer.split_text(text))
        assert score == pytest.approx(float((img @ txt.T).mean()), abs=1e-5)
    assert cw != pytest.approx(clip_scores(scorer, [(rec, images[0], images[0])])[0][0], abs=1e-6)  # both count


def test_self_qa_on_two_image_records_with_qwen2_5_vl(two_images, paths, tmp_path):
    """The generator sees both images (a multi-image family) and the CLIP check scores over both."""
    from mmpo.builders.judging import rubric_judge
    from mmpo.builders.self_qa import SelfQAConfig
    from mmpo.builders.self_qa import build as build_self_qa
    from mmpo.config import load

    def judge(prompts, media, temperature, seed):
        assert all(isinstance(m, list) and len(m) == 2 for m in media)
        outs = []
        for p in prompts:
            s = min(10, 1 + len(p.split("Answer:")[1].split("Give four")[0].split()))
            outs.append(f"Relevance: {s}, Accuracy: {s}, Temporal grounding: {s}, Clarity: {s}")
        return outs

    cfg = load(SelfQAConfig, None, [f"in_sft={two_images['sft']}", f"out_dir={tmp_path / 'sq'}", "progress=false",
                                    f"model.path={paths['qwen2_5_vl']}", "model.device=cpu", "max_new_tokens=6",
                                    "questions_per_item=1", "temperatures=[0.7, 1.3]", "min_gap=0",
                                    f"clip_model={two_images['clip']}"])
    out = build_self_qa(cfg, judge=rubric_judge(judge))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["answers"] == 3 * 1 * 2 and manifest["counts"].get("skipped", 0) == 0
    pairs = read_pairs(out / "pairs.jsonl", media_root=two_images["root"])
    assert all(len(p.media) == 2 for p in pairs)


# -- evaluation runners on the new families -----------------------------------------------------------

@pytest.fixture(scope="module")
def bench_data(tmp_path_factory):
    from test_benchmark_runners import _amber_data, _chair_data, _eh_data

    root = tmp_path_factory.mktemp("bench_families")
    return {"chair": _chair_data(root / "chair"), "amber": _amber_data(root / "amber"),
            "eventhallusion": _eh_data(root / "eh"), "root": root}


def _predictions(out) -> dict:
    """predictions.jsonl as {row key: answer}; logits-mode margins are compared by `_margins`."""
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return {json.dumps({k: v for k, v in r.items() if k not in ("answer", "margin")}, sort_keys=True): r["answer"]
            for r in rows}


def _margins(out) -> dict:
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    return {json.dumps({k: v for k, v in r.items() if k not in ("answer", "margin")}, sort_keys=True): r.get("margin")
            for r in rows}


def _same_margins(a, b):
    ma, mb = _margins(a), _margins(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert ma[k] is None or ma[k] == pytest.approx(mb[k], abs=1e-4), k


def _run(name, path, data, out, **kw):
    from mmpo.eval import EVALUATORS

    extra = {"lemmatizer": "table"} if name == "chair" else {}
    model = ModelConfig(path=str(path), device="cpu", num_frames=4)
    cfg = EVALUATORS[name].config(model=model, out_dir=str(out), **data, **extra, **kw)
    return cfg, EVALUATORS[name].run(cfg, *load_model(model))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_chair_captions_are_the_models_greedy_answers(paths, bench_data, family, tmp_path):
    from mmpo.eval import chair
    from mmpo.media import load_image
    from mmpo.models import generate_answers

    cfg, m = _run("chair", paths[family], bench_data["chair"], tmp_path / "chair", max_new_tokens=6, batch_size=3)
    model, proc = load_model(ModelConfig(path=str(paths[family]), device="cpu"))
    rows = [json.loads(x) for x in (tmp_path / "chair" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "chair_i" in m
    for r in rows:
        image = load_image(f"{cfg.image_root}/COCO_val2014_{int(r['image_id']):012d}.jpg")
        assert [r["answer"]] == generate_answers(model, proc, [chair.PROMPT], [image], "image", max_new_tokens=6)[0]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_amber_generate_batched_equals_one_by_one_and_logits_answer_yes_or_no(paths, bench_data, family, tmp_path):
    data = bench_data["amber"]
    _, batched = _run("amber", paths[family], data, tmp_path / "b", max_new_tokens=4, batch_size=5)
    _, single = _run("amber", paths[family], data, tmp_path / "s", max_new_tokens=4, batch_size=1)
    assert _predictions(tmp_path / "b") == _predictions(tmp_path / "s") and len(_predictions(tmp_path / "b")) == 12
    assert batched == single  # the generative query (id 1) is not a yes/no question: the runner leaves it out
    _, logits = _run("amber", paths[family], data, tmp_path / "l", mode="logits", batch_size=5)
    answers = _predictions(tmp_path / "l")
    assert len(answers) == 12 and set(answers.values()) <= {"Yes", "No", "yes", "no"}


@pytest.mark.parametrize("mode", ["generate", "logits"])
def test_eventhallusion_on_qwen2_5_vl_video(paths, bench_data, mode, tmp_path):
    data = bench_data["eventhallusion"]
    _, batched = _run("eventhallusion", paths["qwen2_5_vl"], data, tmp_path / "b", mode=mode, max_new_tokens=4,
                      batch_size=4)
    _, single = _run("eventhallusion", paths["qwen2_5_vl"], data, tmp_path / "s", mode=mode, max_new_tokens=4,
                     batch_size=1)
    assert _predictions(tmp_path / "b") == _predictions(tmp_path / "s") and len(_predictions(tmp_path / "b")) == 12
    _same_margins(tmp_path / "b", tmp_path / "s")
    assert batched.keys() == single.keys()


@pytest.mark.parametrize("mode", ["generate", "logits"])
def test_videohallucer_on_qwen2_5_vl_video(paths, mode, tmp_path):
    from videos import make_frames, write_clip

    from mmpo.eval import videohallucer_metrics, videohallucer_runner

    data = tmp_path / "vh" / "object_relation"
    (data / "videos").mkdir(parents=True)
    for i in range(2):
        write_clip(data / "videos" / f"clip{i}.mp4", make_frames(T=4, H=48, W=64, seed=i), fps=4)
    pairs = [{"basic": {"video": f"clip{i}.mp4", "question": "Is there a square in the video?", "answer": "yes"},
              "hallucination": {"video": f"clip{i}.mp4", "question": "Is there a cat in the video?", "answer": "no"},
              "type": "object"} for i in range(2)]
    (data / "object_relation.json").write_text(json.dumps(pairs, indent=4))
    results = {}
    for bs in (1, 4):
        cfg = videohallucer_runner.VideoHallucerEvalConfig(model=ModelConfig(path=str(paths["qwen2_5_vl"]), device="cpu",
                                                               num_frames=4),
                                             data_dir=str(tmp_path / "vh"), categories=["object_relation"],
                                             out_dir=str(tmp_path / f"out{bs}"), mode=mode, batch_size=bs,
                                             max_new_tokens=4)
        results[bs] = videohallucer_runner.run_videohallucer(cfg)
        assert len(_predictions(tmp_path / f"out{bs}")) == 4
    assert _predictions(tmp_path / "out1") == _predictions(tmp_path / "out4")
    _same_margins(tmp_path / "out1", tmp_path / "out4")
    assert results[1]["object_relation"]["n_pairs"] == 2
    scored = videohallucer_metrics.score_answers_file(data / "object_relation.json",
                                                      tmp_path / "out4" / "results" / "object_relation.json")
    assert scored["pair_accuracy"] == results[4]["object_relation"]["pair_accuracy"]


# -- Qwen3-VL-MoE (a reconstructed config: no hub config of it is vendored) -------------------------------

@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    from mmpo.app.cli import main

    path = tmp_path_factory.mktemp("moe") / "qwen3_vl_moe"
    assert main(["make-model", "--family", "qwen3_vl_moe", "--out", str(path)]) == 0
    return path, load_model(ModelConfig(path=str(path), device="cpu"))


def test_qwen3_vl_moe_has_no_7b_shape(tmp_path):
    from mmpo.models import make_tiny_model

    with pytest.raises(ValueError, match="no Qwen3-VL-MoE config is vendored"):
        make_tiny_model("qwen3_vl_moe", tmp_path / "7b", size="7b")


def test_qwen3_vl_moe_logps_equal_a_plain_hf_forward(moe):
    from test_families import check_logps_against_hf

    from mmpo.models import family_of

    _, (model, proc) = moe
    assert family_of(model) == "qwen3_vl_moe" and type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    check_logps_against_hf(model, proc)


def test_qwen3_vl_moe_lora_reaches_the_attention_and_4bit_trains(moe):
    import torch
    from test_families import CHOSEN, PROMPTS, _images

    from mmpo.config import LoraConfig
    from mmpo.logprobs import plain_logps
    from mmpo.models import encode_answers, encode_prompts

    path, _ = moe
    model, _ = load_model(ModelConfig(path=str(path), device="cpu"), LoraConfig(r=4, alpha=8), trainable=True)
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(lora) == 2 * 4 and all("language_model" in n and "self_attn" in n for n in lora)  # experts are fused
    bnb = pytest.importorskip("bitsandbytes")
    model, proc = load_model(ModelConfig(path=str(path), device="cpu", load_in_4bit=True), LoraConfig(r=4, alpha=8),
                             trainable=True)
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all("language_model" in n and "self_attn" in n for n in linear4)  # experts, router: dense
    loss = -plain_logps(model, encode_prompts(proc, PROMPTS, _images(), "image"), encode_answers(proc, CHOSEN))[0].mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n
               or "lora_A" in n)
