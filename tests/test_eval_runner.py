"""mmpo/eval/pope_runner.py and videohallucer_runner.py on tiny models: logits vs generate agreement, prefix reuse =
plain path, resume, reports, VideoHallucer in the reference layout, the trainer hook, the CLI and the shipped eval
configs."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import COLORS, color_image, color_question, tiny_model, yes_no_model
from videos import make_frames, write_clip

from mmpo.config import ConfigError, LoraConfig, ModelConfig, load
from mmpo.eval import EVALUATORS, answering, pope, pope_metrics, predictions, videohallucer_metrics, videohallucer_runner
from mmpo.eval import cli as eval_cli
from mmpo.eval import pope_runner as runner
from mmpo.media import MediaError, load_image
from mmpo.models import add_lora, load_model, scoring

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 colour images, two POPE splits (4 questions per image each), and a tiny llava briefly fine-tuned
    to answer "yes"/"no" + EOS, so greedy generation gives clean answers."""
    root = tmp_path_factory.mktemp("pope")
    (root / "img").mkdir()
    for i, c in enumerate(COLORS):
        color_image(c, seed=i).save(root / "img" / f"{c}.png")
    for split, shift in (("random", 1), ("adversarial", 2)):
        lines, qid = [], 1
        for c in COLORS:
            for other in (c, COLORS[(COLORS.index(c) + shift) % 4], c, COLORS[(COLORS.index(c) + 3) % 4]):
                lines.append({"question_id": qid, "image": f"{c}.png", "text": color_question(other),
                              "label": "yes" if other == c else "no"})
                qid += 1
        (root / f"coco_pope_{split}.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    model_dir = yes_no_model("llava", root)  # a text-only rule: "yes" for red / green questions
    model, proc = load_model(ModelConfig(path=str(model_dir), device="cpu"))
    return {"root": root, "model": model, "processor": proc, "model_dir": str(model_dir)}


def _cfg(world, out: str, **kw) -> runner.PopeEvalConfig:
    root = world["root"]
    return runner.PopeEvalConfig(model=ModelConfig(path=world["model_dir"], device="cpu"),
                                 questions=[str(root / f"coco_pope_{s}.json") for s in ("random", "adversarial")],
                                 image_root=str(root / "img"), out_dir=str(root / out), **kw)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_logits_agree_with_clean_generations(world):
    gen = runner.run_pope(_cfg(world, "gen", mode="generate", max_new_tokens=4), world["model"], world["processor"])
    logit = runner.run_pope(_cfg(world, "logit", mode="logits"), world["model"], world["processor"])
    assert gen["mode"] == "generate" and logit["mode"] == "logits"
    by_key = {(r["split"], r["question_id"]): r for r in _rows(world["root"] / "logit" / "predictions.jsonl")}
    clean = 0
    for r in _rows(world["root"] / "gen" / "predictions.jsonl"):
        if pope.parse_lmms(r["answer"]) != "unknown":  # exactly "yes" / "no"
            clean += 1
            other = by_key[(r["split"], r["question_id"])]
            assert other["answer"] == r["answer"].strip().lower(), (r, other)
    assert clean >= 1
    assert {r["answer"] for r in by_key.values()} == {"yes", "no"}  # both signs of the margin are exercised
    assert all(isinstance(r["margin"], float) for r in by_key.values())


@pytest.mark.parametrize("batch_size", [3, 20])  # 20: several images per packed forward
def test_prefix_reuse_equals_plain_path(world, batch_size):
    cfg = _cfg(world, "unused")
    items = predictions.by_media(runner.pope_items(cfg, runner.load_pope_questions(cfg)))
    kw = dict(mode="logits", batch_size=batch_size)
    args = (world["model"], world["processor"], items, "image", load_image)
    plain = answering.answer_items(*args, prefix_reuse=False, **kw)
    shared = answering.answer_items(*args, prefix_reuse=True, **kw)
    assert plain.keys() == shared.keys() and len(plain) == 32
    for k in plain:
        assert plain[k][0] == shared[k][0]
        assert shared[k][1] == pytest.approx(plain[k][1], abs=1e-4)


def test_packed_questions_of_different_lengths_equal_plain_path(world):
    """Rows with different question counts and lengths in one forward: padding must not leak into answers."""
    root = world["root"] / "img"
    texts = ["is there a red square ?", "is there a big green square in the image ?", "red ?",
             "is there a blue or a yellow square in the middle of the image ?"]
    items = [answering.Item((i, j), str(root / f"{c}.png"), texts[(i + j) % 4])
             for i, c in enumerate(COLORS) for j in range(i + 1)]  # 1, 2, 3, 4 questions per image
    args = (world["model"], world["processor"], items, "image", load_image)
    plain = answering.answer_items(*args, mode="logits", batch_size=10)
    shared = answering.answer_items(*args, mode="logits", batch_size=10, prefix_reuse=True)
    assert plain.keys() == shared.keys() and len(plain) == 10
    for k in plain:
        assert shared[k][1] == pytest.approx(plain[k][1], abs=1e-4)


def test_margin_uses_logsumexp_over_case_variants():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    want = torch.logsumexp(torch.tensor([1.0, 2.0]), 0) - torch.tensor(3.0)
    assert scoring.yes_no_margin(logits, [1, 2], [3]).item() == pytest.approx(want.item())


def test_resume_skips_answered_and_never_duplicates(world):
    out = world["root"] / "resume"
    runner.run_pope(_cfg(world, "resume", mode="logits", limit=3), world["model"], world["processor"])
    rows = _rows(out / "predictions.jsonl")
    assert len(rows) == 6  # 3 per split
    # Tamper with a stored answer: a resumed run must reuse it, not recompute it.
    first = rows[0]
    flipped = "no" if first["answer"] == "yes" else "yes"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**first, "answer": flipped})
    (out / "predictions.jsonl").write_text("\n".join(lines) + "\n" + '{"question_id": 9')  # + a torn last line
    runner.run_pope(_cfg(world, "resume", mode="logits"), world["model"], world["processor"])
    rows = _rows(out / "predictions.jsonl")
    keys = [(r["split"], r["question_id"]) for r in rows]
    assert len(rows) == 32 and len(set(keys)) == 32
    assert rows[0]["answer"] == flipped
    runner.run_pope(_cfg(world, "resume", mode="logits"), world["model"], world["processor"])
    assert len(_rows(out / "predictions.jsonl")) == 32
    with pytest.raises(ValueError, match="other settings"):
        runner.run_pope(_cfg(world, "resume", mode="generate"), world["model"], world["processor"])
    # new weights under the same path (a retrained model): the old answers are not theirs
    import os

    weights = next(Path(world["model_dir"]).glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="weights"):
        runner.run_pope(_cfg(world, "resume", mode="logits"), world["model"], world["processor"])


def test_stored_predictions_split_on_newline_only(tmp_path):
    """An answer holding U+2028 / U+0085 is one line; only a torn LAST line is dropped (and the file fixed)."""
    rows = [{"split": "random", "question_id": i, "answer": f"Yes\u2028{i}\u0085"} for i in range(3)]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"split": "ran',
                    encoding="utf-8")
    stored = predictions.load_predictions(path, ("split", "question_id"))
    assert [stored[("random", str(i))]["answer"] for i in range(3)] == [r["answer"] for r in rows]
    assert [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x] == rows


def test_metrics_report_and_answer_files(world):
    m = runner.run_pope(_cfg(world, "full", mode="logits", prompt_suffix="llava"), world["model"], world["processor"])
    out = world["root"] / "full"
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("f1", "accuracy", "precision", "recall", "yes_ratio", "pooled", "splits", "parser", "mode"):
        assert key in saved
    assert set(saved["splits"]) == {"random", "adversarial"} and saved["pooled"]["n"] == 32
    assert saved["prompt_suffix"] == pope.PROMPT_SUFFIXES["llava"]
    assert (out / "report.md").exists() and (out / "pope_splits.png").stat().st_size > 0
    again = pope_metrics.score_answers_file(world["root"] / "coco_pope_random.json", out / "answers_random.jsonl")
    assert again["f1"] == pytest.approx(m["splits"]["random"]["f1"])


def test_training_hook_on_peft_model(world):
    hook = runner.make_pope_hook(_cfg(world, "hook", mode="logits", limit=4))
    plain = hook(world["model"], world["processor"], 0)
    assert set(plain) == {f"pope/{s}/{k}" for s in ("random", "adversarial") for k in ("f1", "accuracy", "yes_ratio")}
    assert not (world["root"] / "hook").exists()
    peft = add_lora(world["model"], LoraConfig(r=4))
    peft.eval()
    try:
        assert hook(peft, world["processor"], 1) == pytest.approx(plain)  # fresh LoRA: B = 0, same answers
    finally:
        peft.unload()


def test_videohallucer_run_reference_layout(tmp_path):
    data = tmp_path / "vh" / "object_relation"
    (data / "videos").mkdir(parents=True)
    for i in range(2):
        write_clip(data / "videos" / f"clip{i}.mp4", make_frames(T=4, H=64, W=64, seed=i), fps=4)
    pairs = [{"basic": {"video": f"clip{i}.mp4", "question": "is there a square in the video ?", "answer": "yes"},
              "hallucination": {"video": f"clip{i}.mp4", "question": "is there a cat in the video ?", "answer": "no"},
              "type": "object"} for i in range(2)]
    (data / "object_relation.json").write_text(json.dumps(pairs, indent=4))
    model_dir = tiny_model("llava_next_video", tmp_path)
    cfg = videohallucer_runner.VideoHallucerEvalConfig(model=ModelConfig(path=str(model_dir), device="cpu", num_frames=4),
                                         data_dir=str(tmp_path / "vh"), categories=["object_relation"],
                                         out_dir=str(tmp_path / "out"), mode="logits", batch_size=2)
    res = videohallucer_runner.run_videohallucer(cfg)
    assert res["object_relation"]["n_pairs"] == 2 and "bias" in res["object_relation"]
    assert res["overall"]["categories"] == ["object_relation"]
    rows = _rows(tmp_path / "out" / "predictions.jsonl")
    assert len(rows) == 4 and {r["answer"] for r in rows} <= {"yes", "no"}
    results_file = tmp_path / "out" / "results" / "object_relation.json"
    scored = videohallucer_metrics.score_answers_file(data / "object_relation.json", results_file)
    assert scored["pair_accuracy"] == res["object_relation"]["pair_accuracy"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "pair_accuracy" in metrics and "object_relation" in metrics["categories"]
    # the default categories on a folder holding one of them: the message says which to ask for
    with pytest.raises(FileNotFoundError, match=r"temporal.json: no such file; `categories` lists .* holds "
                                                r"\['object_relation'\]: e.g. categories=\[object_relation\]"):
        videohallucer_runner.run_videohallucer(dataclasses.replace(cfg, categories=["object_relation", "temporal"],
                                                     out_dir=str(tmp_path / "out2")))
    # files named for no category are scored each under its own name (both were keyed "" and one was lost) ...
    for name in ("a", "b"):
        shutil.copy(data / "object_relation.json", tmp_path / f"{name}.json")
    own = dataclasses.replace(cfg, data_dir="", video_root=str(data / "videos"), out_dir=str(tmp_path / "out3"),
                              files=[str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert {k: v["n_pairs"] for k, v in videohallucer_runner.run_videohallucer(own).items()} == {"a": 2, "b": 2}
    # ... two files of one category are refused, and a video may not leave the video folder
    with pytest.raises(ValueError, match=r"object_relation.json: category 'object_relation' was read from .* already"):
        videohallucer_runner.run_videohallucer(dataclasses.replace(own, files=[str(data / "object_relation.json")] * 2))
    pairs[1]["basic"]["video"] = "../../clip1.mp4"
    (tmp_path / "a.json").write_text(json.dumps(pairs))
    with pytest.raises(ValueError, match=r"a.json: pair 1 basic: media path '../../clip1.mp4' escapes the media root"):
        videohallucer_runner.run_videohallucer(dataclasses.replace(own, files=[str(tmp_path / "a.json")]))


def test_cli_scoring_and_build(tmp_path, capsys):
    qs = [{"question_id": i, "image": "a.jpg", "text": "Is there a cat in the image?", "label": lab}
          for i, lab in enumerate(["yes", "no", "yes", "no"], 1)]
    (tmp_path / "q.json").write_text("".join(json.dumps(q) + "\n" for q in qs))
    answers = ["Yes, there is.", "No.", "no", "yes"]  # official parser: yes, no, no, yes -> TP 1, TN 1, FN 1, FP 1
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"question_id": i, "answer": a}) + "\n"
                                              for i, a in enumerate(answers, 1)))
    assert eval_cli.main("pope", ["--questions", str(tmp_path / "q.json"), "--answers", str(tmp_path / "a.jsonl"),
                            "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["tp"], m["tn"], m["fp"], m["fn"], m["accuracy"]) == (1, 1, 1, 1, 0.5)
    assert '"f1"' in capsys.readouterr().out

    pairs = [{"basic": {"video": "v.mp4", "question": "q?", "answer": "yes", "predict": "Yes."},
              "hallucination": {"video": "v.mp4", "question": "h?", "answer": "no", "predict": "Yes."}}]
    (tmp_path / "temporal.json").write_text(json.dumps([{k: {kk: vv for kk, vv in v.items() if kk != "predict"}
                                                         for k, v in pairs[0].items()}]))
    (tmp_path / "res_temporal.json").write_text(json.dumps(pairs))
    assert eval_cli.main("videohallucer", ["--data", str(tmp_path / "temporal.json"), "--answers",
                                     str(tmp_path / "res_temporal.json"), "--out", str(tmp_path / "vh.json")]) == 0
    vh = json.loads((tmp_path / "vh.json").read_text())
    assert (vh["basic_accuracy"], vh["hallucinated_accuracy"], vh["pair_accuracy"]) == (1.0, 0.0, 0.0)

    coco = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(6)],
            "categories": [{"id": j, "name": n} for j, n in enumerate(["cat", "dog", "car", "tree", "cup", "bus"])],
            "annotations": [{"id": 10 * i + j, "image_id": i, "category_id": (i + j) % 6}
                            for i in range(6) for j in range(3)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert eval_cli.main("pope-build", ["--annotations", str(tmp_path / "coco.json"), "--out", str(tmp_path / "pope"),
                                  "--num-images", "4", "--seed", "1"]) == 0
    for split in pope.SPLITS:
        assert len(pope.read_questions(tmp_path / "pope" / f"coco_pope_{split}.json")) == 4 * 6
    with pytest.raises(SystemExit):
        eval_cli.main("pope", ["--questions", str(tmp_path / "q.json")])  # neither --answers nor --config


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    name = path.stem.split("_")[0]  # pope_logits.yaml -> pope
    assert path.read_text().startswith(f"# mmpo eval {name} --config configs/eval/{path.name}")
    cfg = load(EVALUATORS[name].config, path, ["model.path=/x"])
    assert cfg.model.path == "/x" and cfg.mode in answering.MODES


def test_config_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="mode"):
        load(runner.PopeEvalConfig, None, ["mode=beam"])
    for cls in (runner.PopeEvalConfig, videohallucer_runner.VideoHallucerEvalConfig):
        with pytest.raises(ConfigError, match="on_bad_media"):
            load(cls, None, ["on_bad_media=ignore"])


# ---------------------------------------------------------------- unreadable media, paths outside image_root

BAD_IMAGES = ["red", "broken", "green", "missing"]  # broken.png is not an image; missing.png does not exist


def _bad_media_cfg(world, tmp_path, out: str, **kw) -> runner.PopeEvalConfig:
    """One split, 2 questions on each of BAD_IMAGES (ids 1-8, labels yes/no)."""
    img = tmp_path / "img"
    if not img.exists():
        img.mkdir()
        for c in ("red", "green"):
            shutil.copy(world["root"] / "img" / f"{c}.png", img / f"{c}.png")
        (img / "broken.png").write_bytes(b"not a png")
        rows = [{"question_id": 2 * k + j + 1, "image": f"{name}.png", "text": color_question(COLORS[j]),
                 "label": ("yes", "no")[j]} for k, name in enumerate(BAD_IMAGES) for j in range(2)]
        (tmp_path / "coco_pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return runner.PopeEvalConfig(model=ModelConfig(path=world["model_dir"], device="cpu"),
                                 questions=[str(tmp_path / "coco_pope_random.json")], image_root=str(img),
                                 out_dir=str(tmp_path / out), mode="logits", batch_size=3, **kw)


@pytest.mark.parametrize("prefix_reuse", [True, False])  # packed and plain answering paths
def test_pope_skips_unreadable_images_and_names_them(world, tmp_path, prefix_reuse):
    cfg = _bad_media_cfg(world, tmp_path, "skip", on_bad_media="skip", prefix_reuse=prefix_reuse)
    m = runner.run_pope(cfg, world["model"], world["processor"])
    img = tmp_path / "img"
    skipped = m["skipped_media"]
    assert (skipped["n_questions"], skipped["n_files"]) == (4, 2)
    assert set(skipped["files"]) == {str(img / "broken.png"), str(img / "missing.png")}
    assert "unreadable image" in skipped["files"][str(img / "broken.png")]
    assert "missing image file" in skipped["files"][str(img / "missing.png")]
    assert m["n"] == 4 and m["question_file"]["count"] == 4  # scored over the answered questions only
    assert json.loads((tmp_path / "skip" / "metrics.json").read_text())["skipped_media"] == skipped
    assert "skipped: 4 questions on 2 unreadable images" in (tmp_path / "skip" / "report.md").read_text()
    rows = _rows(tmp_path / "skip" / "predictions.jsonl")
    assert sorted(int(r["question_id"]) for r in rows) == [1, 2, 5, 6]
    # the answers kept are those of the same questions asked without the unreadable images
    good = [answering.Item(("random", str(q)), str(img / f"{BAD_IMAGES[(q - 1) // 2]}.png"),
                           color_question(COLORS[(q - 1) % 2])) for q in (1, 2, 5, 6)]
    want = answering.answer_items(world["model"], world["processor"], good, "image", load_image,
                                  mode="logits", batch_size=3)
    for r in rows:
        assert r["margin"] == pytest.approx(want[("random", str(r["question_id"]))][1], abs=1e-4)
    # issue 24 item 7: the run's own answers file rescores to its numbers with --unanswered skip
    answers = tmp_path / "skip" / "answers_random.jsonl"
    with pytest.raises(ValueError, match=r"4 questions have no answer .*add --unanswered skip"):
        pope_metrics.score_answers_file(cfg.questions[0], answers)
    again = pope_metrics.score_answers_file(cfg.questions[0], answers, unanswered="skip")
    assert again["n_unanswered"] == 4 and all(again[k] == m[k] for k in ("f1", "accuracy", "yes_ratio", "n"))


def test_training_hook_skips_unreadable_images(world, tmp_path):
    cfg = _bad_media_cfg(world, tmp_path, "hook", on_bad_media="skip")
    got = runner.make_pope_hook(cfg)(world["model"], world["processor"], 0)
    m = runner.run_pope(cfg, world["model"], world["processor"])
    assert got == pytest.approx({f"pope/random/{k}": m[k] for k in ("f1", "accuracy", "yes_ratio")})


def test_pope_unreadable_image_is_an_error_by_default(world, tmp_path):
    cfg = _bad_media_cfg(world, tmp_path, "err")
    with pytest.raises(MediaError, match=r"broken\.png: unreadable image .*on_bad_media: skip"):
        runner.run_pope(cfg, world["model"], world["processor"])


@pytest.mark.parametrize("image", ["../red.png", "sub/../../red.png", "/etc/passwd"])
def test_pope_images_outside_image_root_are_refused(world, tmp_path, image):
    cfg = _bad_media_cfg(world, tmp_path, "escape")
    qfile = Path(cfg.questions[0])
    lines = qfile.read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "image": image})
    qfile.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"coco_pope_random\.json:3: field 'image': media path .* escapes the media root"):
        runner.run_pope(cfg, world["model"], world["processor"])
    assert not (tmp_path / "escape").exists()  # refused before anything ran


def _vh_world(tmp_path) -> Path:
    """object_relation with 3 pairs; pair 1's hallucination video is not a video."""
    data = tmp_path / "vh" / "object_relation"
    (data / "videos").mkdir(parents=True)
    for i in range(2):
        write_clip(data / "videos" / f"clip{i}.mp4", make_frames(T=4, H=64, W=64, seed=i), fps=4)
    (data / "videos" / "broken.mp4").write_bytes(b"\x00" * 64)
    videos = [("clip0.mp4", "clip0.mp4"), ("clip1.mp4", "broken.mp4"), ("clip1.mp4", "clip0.mp4")]
    pairs = [{"basic": {"video": b, "question": "is there a square in the video ?", "answer": "yes"},
              "hallucination": {"video": h, "question": "is there a cat in the video ?", "answer": "no"},
              "type": "object"} for b, h in videos]
    (data / "object_relation.json").write_text(json.dumps(pairs, indent=4))
    return data


def test_videohallucer_skips_pairs_with_unreadable_videos(tmp_path):
    data = _vh_world(tmp_path)
    model_dir = tiny_model("llava_next_video", tmp_path)

    def cfg(out, **kw):
        return videohallucer_runner.VideoHallucerEvalConfig(model=ModelConfig(path=str(model_dir), device="cpu", num_frames=4),
                                              data_dir=str(tmp_path / "vh"), categories=["object_relation"],
                                              out_dir=str(tmp_path / out), mode="logits", batch_size=2, **kw)

    res = videohallucer_runner.run_videohallucer(cfg("skip", on_bad_media="skip"))["object_relation"]
    broken = str(data / "videos" / "broken.mp4")
    assert res["n_pairs"] == 2 and res["bias"]["n_pairs"] == 2
    assert res["skipped_media"]["n_pairs"] == 1 and list(res["skipped_media"]["files"]) == [broken]
    assert "unreadable or truncated video" in res["skipped_media"]["files"][broken]
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert metrics["skipped_media"] == {"n_pairs": 1, "n_files": 1, "files": res["skipped_media"]["files"]}
    kept = json.loads((tmp_path / "skip" / "results" / "object_relation.json").read_text())
    assert [p["hallucination"]["video"] for p in kept] == ["clip0.mp4", "clip0.mp4"]  # pairs 0 and 2
    assert "object_relation: skipped 1 pairs on 1 unreadable videos" in (tmp_path / "skip" / "report.md").read_text()
    with pytest.raises(MediaError, match=r"broken\.mp4: unreadable or truncated video"):
        videohallucer_runner.run_videohallucer(cfg("err"))
    # issue 24 item 7: the run's own results file rescores to its numbers with --unanswered skip
    results = tmp_path / "skip" / "results" / "object_relation.json"
    with pytest.raises(ValueError, match=r"2 pairs, but .* has 3; .*add --unanswered skip"):
        videohallucer_metrics.score_answers_file(data / "object_relation.json", results)
    again = videohallucer_metrics.score_answers_file(data / "object_relation.json", results, unanswered="skip")
    assert again["n_unanswered"] == 1 and again["pair_accuracy"] == res["pair_accuracy"]


@pytest.mark.parametrize("family,media_type", [("llava_next", "image"), ("video_llava", "image"),
                                               ("llava_onevision", "image"), ("llava_next_video", "video"),
                                               ("video_llava", "video")])
def test_packed_answers_equal_plain_for_every_family(tmp_path, family, media_type):
    """Random tiny models (margins are arbitrary but must agree): packed rows == plain rows for each family."""
    model, proc = load_model(ModelConfig(path=str(tiny_model(family, tmp_path)), device="cpu"))
    if media_type == "image":
        media = {c: color_image(c, seed=i) for i, c in enumerate(COLORS[:3])}
    else:
        frames = 8 if family == "video_llava" else 4
        media = {c: make_frames(T=frames, H=32, W=32, seed=i) for i, c in enumerate(COLORS[:3])}
    items = [answering.Item((c, j), c, color_question(COLORS[j])) for c in media for j in range(2 + COLORS.index(c) % 2)]
    args = (model, proc, items, media_type, media.__getitem__)
    plain = answering.answer_items(*args, mode="logits", batch_size=8)
    packed = answering.answer_items(*args, mode="logits", batch_size=8, prefix_reuse=True)
    assert plain.keys() == packed.keys()
    for k in plain:
        assert packed[k][1] == pytest.approx(plain[k][1], abs=1e-4), k


def test_pope_console_line_agrees_with_the_report(world, tmp_path, capsys):
    """Issue 24 item 7: `mmpo eval pope --config` printed fractions (F1 0.8571) while report.md prints %."""
    import yaml

    cfg = _cfg(world, "console", mode="logits", limit=4)
    (tmp_path / "pope.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg)))))
    assert eval_cli.main("pope", ["--config", str(tmp_path / "pope.yaml")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    shown = {k: f"{100 * m[k]:.2f}" for k in ("f1", "accuracy", "yes_ratio")}
    assert f"F1 {shown['f1']} accuracy {shown['accuracy']} yes_ratio {shown['yes_ratio']} (%)" in line
    row = next(x for x in (Path(cfg.out_dir) / "report.md").read_text().splitlines() if x.startswith("| **mean"))
    cells = [c.strip() for c in row.strip("|").split("|")]  # split, accuracy, precision, recall, f1, yes_ratio
    assert (cells[1], cells[4], cells[5]) == (shown["accuracy"], shown["f1"], shown["yes_ratio"])
