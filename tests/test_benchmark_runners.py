"""Model runners of CHAIR, AMBER and EventHallusion on tiny models, end to end: the benchmark's prompt reaches
the model, logits answers equal clean greedy answers, the reference answer files score the same through the
scorers' own file path, resume after a kill, unreadable media, reports; and the one EVALUATORS registry that
`mmpo eval`, `mmpo validate` and the demo read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import COLORS, SAMPLES, color_image, color_question, tiny_model, yes_no_model
from videos import write_clip

from mmpo.config import ConfigError, ModelConfig, load
from mmpo.eval import EVALUATORS, chair, chair_runner, eventhallusion
from mmpo.eval.amber_runner import AmberEvalConfig
from mmpo.eval.chair_runner import ChairEvalConfig
from mmpo.eval.eventhallusion_runner import EventHallusionEvalConfig
from mmpo.logprobs import plain_logps
from mmpo.media import MediaError, load_image
from mmpo.models import encode_answers, encode_prompts, generate_answers, load_model

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a man with a dog on a chair ."  # what the CHAIR model learns to say about every image


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _caption_model(root: Path) -> Path:
    """A tiny llava fine-tuned (30 steps) to answer chair.PROMPT with CAPTION: captions that name COCO objects."""
    model, proc = load_model(ModelConfig(path=str(tiny_model("llava", root)), device="cpu"), trainable=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(30):
        images = [color_image(COLORS[(step + k) % 4], seed=k) for k in range(4)]
        lp, _ = plain_logps(model, encode_prompts(proc, [chair.PROMPT] * 4, images, "image"),
                            encode_answers(proc, [CAPTION] * 4))
        opt.zero_grad()
        (-lp.mean()).backward()
        opt.step()
    model.save_pretrained(root / "captioner")
    proc.save_pretrained(root / "captioner")
    return root / "captioner"


def _chair_data(root: Path) -> dict:
    """The COCO-layout CHAIR fixtures (3 images: 139, 285, 632) and an image for each under img/."""
    (root / "img").mkdir(parents=True)
    data = json.loads((SAMPLES / "chair_coco_instances_sample.json").read_text())
    for i, im in enumerate(data["images"]):
        color_image(COLORS[i], seed=i).save(root / "img" / im["file_name"])
    return {"annotations": str(SAMPLES / "chair_coco_instances_sample.json"),
            "captions": str(SAMPLES / "chair_coco_captions_sample.json"), "image_root": str(root / "img")}


def _amber_data(root: Path) -> dict:
    """AMBER's layout (query array + annotations by id) with colour questions: 4 images x 3 questions of the
    three dimensions, truth "yes" when the question names the image's colour; id 1 is a generative query."""
    (root / "image").mkdir(parents=True)
    types = ["discriminative-hallucination", "discriminative-attribute-state", "discriminative-attribute-number",
             "discriminative-attribute-action", "discriminative-relation", "relation"]
    query, ann = [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."}], [
        {"id": 1, "type": "generative", "truth": ["man"]}]
    qid = 1005
    for i, c in enumerate(COLORS):
        color_image(c, seed=i).save(root / "image" / f"AMBER_{i + 1}.jpg")
        for other in (c, COLORS[(i + 1) % 4], COLORS[(i + 2) % 4]):
            query.append({"id": qid, "image": f"AMBER_{i + 1}.jpg", "query": color_question(other)})
            ann.append({"id": qid, "type": types[qid % 6], "truth": "yes" if other == c else "no"})
            qid += 1
    (root / "query.json").write_text(json.dumps(query, indent=4))
    (root / "annotations.json").write_text(json.dumps(ann, indent=4))
    return {"questions": str(root / "query.json"), "annotations": str(root / "annotations.json"),
            "image_root": str(root / "image")}


def _eh_data(root: Path) -> dict:
    """EventHallusion's layout: questions/<split>_questions.json (2 videos x 2 colour questions per split) and
    videos/<split>/<id>.mp4 (4 frames of one colour square)."""
    (root / "questions").mkdir(parents=True)
    for s, split in enumerate(eventhallusion.SPLITS):
        (root / "videos" / split).mkdir(parents=True)
        videos = []
        for v in range(2):
            c = COLORS[(s + v) % 4]
            vid = f"{split}_{v + 1:03d}"
            write_clip(root / "videos" / split / f"{vid}.mp4", np.stack([np.asarray(color_image(c, 64, seed=v))] * 4),
                       fps=4)
            qs = [{"type": "t", "question": color_question(o), "answer": "Yes." if o == c else "No."}
                  for o in (c, COLORS[(s + v + 1) % 4])]
            videos.append({"id": vid, "category": "test", "length": "00:01", "event_info": {}, "questions": qs})
        (root / "questions" / f"{split}_questions.json").write_text(json.dumps(videos, indent=4))
    return {"questions": [str(root / "questions")], "video_root": str(root / "videos")}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Data of the three benchmarks, their models (loaded once) and a config factory."""
    root = tmp_path_factory.mktemp("bench")
    data = {"chair": _chair_data(root / "chair"), "amber": _amber_data(root / "amber"),
            "eventhallusion": _eh_data(root / "eh")}
    paths = {"chair": _caption_model(root), "amber": yes_no_model("llava", root),
             "eventhallusion": yes_no_model("llava_next_video", root, "video", eventhallusion.PROMPT_SUFFIX, steps=80)}
    loaded = {name: load_model(ModelConfig(path=str(p), device="cpu")) for name, p in paths.items()}

    def cfg(name: str, out: str, **kw):
        model = ModelConfig(path=str(paths[name]), device="cpu", num_frames=4)
        extra = {"lemmatizer": "table"} if name == "chair" else {}
        return EVALUATORS[name].config(model=model, out_dir=str(root / "out" / out), **data[name], **extra, **kw)

    def run(name: str, cfg_):
        return EVALUATORS[name].run(cfg_, *loaded[name])

    return {"root": root, "data": data, "cfg": cfg, "run": run, "loaded": loaded}


# ---------------------------------------------------------------- each runner end to end


def test_chair_captions_each_image_with_the_prompt_and_scores_them(bench):
    cfg = bench["cfg"]("chair", "chair", max_new_tokens=12)
    m = bench["run"]("chair", cfg)
    out = Path(cfg.out_dir)
    rows = _rows(out / "predictions.jsonl")
    model, proc = bench["loaded"]["chair"]
    for r in rows:  # the runner's caption is the model's greedy answer to the benchmark's prompt
        image = load_image(Path(cfg.image_root) / f"COCO_val2014_{int(r['image_id']):012d}.jpg")
        assert [r["answer"]] == generate_answers(model, proc, [chair.PROMPT], [image], "image", max_new_tokens=12)[0]
        assert r["answer"] == CAPTION
    # person, dog, chair in each of 3 captions: only the person of image 139 is there (gt 3 + 3 + 2 classes)
    assert (m["n_mentions"], m["n_hallucinated"]) == (9, 8)
    assert (m["chair_i"], m["chair_s"], m["recall"]) == (8 / 9, 1.0, 1 / 8)
    assert m["vocabulary"] == "coco"  # the default: the reference's COCO lists
    again = EVALUATORS["chair"].score_file(cfg.annotations, out / "answers.jsonl", cfg.captions, "table")
    assert {k: again[k] for k in ("chair_i", "chair_s", "recall")} == {k: m[k] for k in ("chair_i", "chair_s", "recall")}
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    report = (out / "report.md").read_text()
    assert "| 100.00 | 88.89 | 12.50 | 3 | 9 | 8 |" in report and "most hallucinated: chair (3), dog (3)" in report
    assert (out / "chair.png").stat().st_size > 0


def test_chair_scores_against_the_annotation_files_own_categories(bench, tmp_path):
    """vocabulary=categories: the file's category names are the classes (as the demo's shapes would be)."""
    data = json.loads((SAMPLES / "chair_coco_instances_sample.json").read_text())
    data["categories"] = [{"id": 1, "name": "dog"}, {"id": 2, "name": "chair"}, {"id": 3, "name": "red bar"}]
    data["annotations"] = [{"id": n, "image_id": i, "category_id": c}
                           for n, (i, c) in enumerate([(139, 1), (285, 1), (285, 2), (632, 3)])]
    (tmp_path / "cats.json").write_text(json.dumps(data))
    cfg = replace(bench["cfg"]("chair", "chair_categories", max_new_tokens=12), annotations=str(tmp_path / "cats.json"),
                  captions="", vocabulary="categories")
    m = bench["run"]("chair", cfg)
    # every caption is CAPTION: dog, chair (a man is no category). 139 has a dog: chair hallucinated; 285 has both;
    # 632 only a red bar: both hallucinated. 3 of 6 mentions, 2 of 3 captions; recall (1 + 2 + 0) / (1 + 2 + 1)
    assert (m["n_mentions"], m["n_hallucinated"]) == (6, 3)
    assert (m["chair_i"], m["chair_s"], m["recall"]) == (3 / 6, 2 / 3, 3 / 4)
    out = Path(cfg.out_dir)
    assert json.loads((out / "metrics.json").read_text())["vocabulary"] == "categories"
    assert "- vocabulary: `categories`" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="vocabulary"):
        replace(cfg, vocabulary="shapes")
    with pytest.raises(FileNotFoundError, match=r"captions: no such file '.*none.json' \(captions= leaves"):
        chair_runner.run_chair(replace(cfg, captions=str(tmp_path / "none.json")))


@pytest.mark.parametrize("name", ["amber", "eventhallusion"])
def test_logits_answers_equal_clean_generations(bench, name):
    gen = bench["run"](name, bench["cfg"](name, f"{name}_gen", mode="generate", max_new_tokens=4))
    logit = bench["run"](name, bench["cfg"](name, f"{name}_logit", mode="logits"))
    key = ("id",) if name == "amber" else ("split", "video", "question")
    out = bench["root"] / "out"
    by_key = {tuple(r[k] for k in key): r for r in _rows(out / f"{name}_logit" / "predictions.jsonl")}
    gen_rows = _rows(out / f"{name}_gen" / "predictions.jsonl")
    clean = [r for r in gen_rows if r["answer"].strip().lower() in ("yes", "no")]
    assert len(clean) >= len(gen_rows) // 2 and len(by_key) == len(gen_rows) == 12
    for r in clean:
        assert by_key[tuple(r[k] for k in key)]["answer"].lower() == r["answer"].strip().lower(), r
    assert {r["answer"] for r in by_key.values()} == {"Yes", "No"}  # both signs of the margin, as the scorer spells
    assert all(isinstance(r["margin"], float) for r in by_key.values())
    if name == "amber":
        # the reference counts exactly "Yes" / "No": the tiny model's lower-case "yes" is neither (generate keeps
        # the raw answer), while logits mode always answers in the reference's spelling
        assert gen["n_unparsed"] == len(clean) and logit["n_unparsed"] == 0
        assert set(logit) >= {"overall", "existence", "attribute", "relation", "attribute_parts"}
    else:  # eval.py reads the lower-cased prefix: the same verdict for "yes" and "Yes"
        assert gen["accuracy"] == logit["accuracy"] and gen["n"] == logit["n"] == 12


def test_amber_reference_file_scores_the_same(bench):
    cfg = bench["cfg"]("amber", "amber_logit", mode="logits")  # written by the test above, or now
    m = bench["run"]("amber", cfg)
    out = Path(cfg.out_dir)
    saved = json.loads((out / "answers.json").read_text())
    assert [r["id"] for r in saved] == list(range(1005, 1017)) and set(saved[0]) == {"id", "response"}
    again = EVALUATORS["amber"].score_file(cfg.questions, cfg.annotations, out / "answers.json")
    for dim in ("overall", "existence", "attribute", "relation", "attribute_parts"):
        assert again[dim] == m[dim]
    assert json.loads((out / "metrics.json").read_text()) == m
    assert "| overall | " in (out / "report.md").read_text()
    assert (out / "amber_dimensions.png").stat().st_size > 0 and (out / "amber_answers.png").stat().st_size > 0


def test_eventhallusion_reference_file_scores_the_same(bench):
    cfg = bench["cfg"]("eventhallusion", "eventhallusion_gen", mode="generate", max_new_tokens=4)
    m = bench["run"]("eventhallusion", cfg)
    out = Path(cfg.out_dir)
    saved = json.loads((out / "answers.json").read_text())  # {split: {video id: {... "qa": [...]}}}
    assert set(saved) == set(eventhallusion.SPLITS) and len(saved["entire"]["entire_001"]["qa"]) == 2
    files = sorted(Path(cfg.questions[0]).glob("*_questions.json"))
    again = EVALUATORS["eventhallusion"].score_file(files, out / "answers.json")
    assert (again["accuracy"], again["splits"]) == (m["accuracy"], m["splits"])
    assert "| **overall** |" in (out / "report.md").read_text() and (out / "eventhallusion.png").stat().st_size > 0


# ---------------------------------------------------------------- resume, settings, unreadable media

TAMPERED = {"chair": "a toilet .", "amber": "Maybe", "eventhallusion": "Maybe"}
OTHER_SETTINGS = {"chair": {"max_new_tokens": 7}, "amber": {"prompt_suffix": " ?"}, "eventhallusion": {"mode": "generate"}}


@pytest.mark.parametrize("name", ["chair", "amber", "eventhallusion"])
def test_resume_after_a_kill_answers_only_what_is_missing(bench, name):
    mode = {} if name == "chair" else {"mode": "logits"}
    cfg = bench["cfg"](name, f"{name}_resume", max_new_tokens=12, **mode)
    bench["run"](name, cfg)
    path = Path(cfg.out_dir) / "predictions.jsonl"
    lines = path.read_text().splitlines()
    first = _rows(path)
    # killed after its first row, in the middle of writing the second; the kept row is altered so that a
    # recomputed answer would show
    path.write_text(json.dumps({**first[0], "answer": TAMPERED[name]}) + "\n" + lines[1][:15])
    m = bench["run"](name, cfg)
    rows = _rows(path)
    assert rows[0]["answer"] == TAMPERED[name]  # kept, not recomputed
    # the rest answered again, each once, as before (margins: other batches, so float noise)
    assert [{**r, "margin": 0} for r in rows[1:]] == [{**r, "margin": 0} for r in first[1:]]
    if name != "chair":
        assert [r["margin"] for r in rows[1:]] == pytest.approx([r["margin"] for r in first[1:]], abs=1e-4)
    if name == "chair":
        assert m["n_mentions"] == 7 and "toilet" in (Path(cfg.out_dir) / "answers.jsonl").read_text()
    else:
        assert m["n_unparsed" if name == "amber" else "not_matching_rate"] > 0  # "Maybe" is scored as it is
    with pytest.raises(ValueError, match="other settings"):
        bench["run"](name, replace(cfg, **OTHER_SETTINGS[name]))


def _break_one_file(bench, name: str, tmp_path: Path) -> tuple[dict, Path]:
    """A copy of the benchmark's media with its first file unreadable; returns (config overrides, that file)."""
    import shutil

    key = "video_root" if name == "eventhallusion" else "image_root"
    media = tmp_path / "media"
    shutil.copytree(bench["data"][name][key], media)
    broken = sorted(p for p in media.rglob("*") if p.is_file())[0]
    broken.write_bytes(b"not a picture")
    return {key: str(media)}, broken


@pytest.mark.parametrize("name", ["chair", "amber", "eventhallusion"])
def test_unreadable_media_is_an_error_or_skipped(bench, name, tmp_path):
    media, broken = _break_one_file(bench, name, tmp_path)
    mode = {} if name == "chair" else {"mode": "logits"}
    with pytest.raises(MediaError, match=rf"{broken.name}.*on_bad_media: skip"):
        bench["run"](name, replace(bench["cfg"](name, f"{name}_err_{tmp_path.name}", **mode), **media))
    cfg = replace(bench["cfg"](name, f"{name}_skip_{tmp_path.name}", on_bad_media="skip", **mode), **media)
    m = bench["run"](name, cfg)
    unit = "images" if name == "chair" else "questions"
    left_out = {"chair": 1, "amber": 3, "eventhallusion": 2}[name]  # what was asked of that file
    assert m["skipped_media"][f"n_{unit}"] == left_out and list(m["skipped_media"]["files"]) == [str(broken)]
    assert f"skipped: {left_out} {unit} on 1 unreadable files" in (Path(cfg.out_dir) / "report.md").read_text()
    answered = len(_rows(Path(cfg.out_dir) / "predictions.jsonl"))
    assert answered == {"chair": 3, "amber": 12, "eventhallusion": 12}[name] - left_out
    assert m.get("n_captions", m.get("n_questions", m.get("n"))) == answered  # scored over what was answered
    # issue 24 item 7: the run's own answers file rescores to the same numbers (--unanswered skip)
    out = Path(cfg.out_dir)
    if name == "chair":  # CHAIR scores the images an answers file answers, counting the rest
        again = EVALUATORS[name].score_file(cfg.annotations, out / "answers.jsonl", cfg.captions, "table")
        assert again["n_images_unanswered"] == left_out
        assert {k: again[k] for k in ("chair_i", "chair_s", "recall")} == {k: m[k] for k in ("chair_i", "chair_s", "recall")}
        return
    if name == "amber":
        args, scored = (cfg.questions, cfg.annotations, out / "answers.json"), ("overall", "existence", "attribute")
    else:
        args, scored = (sorted(Path(cfg.questions[0]).glob("*_questions.json")), out / "answers.json"), ("accuracy",)
    with pytest.raises(ValueError, match=rf"{left_out} questions have no answer .*add --unanswered skip"):
        EVALUATORS[name].score_file(*args)
    again = EVALUATORS[name].score_file(*args, unanswered="skip")
    assert again["n_unanswered"] == left_out and all(again[k] == m[k] for k in scored)


@pytest.mark.parametrize("name", ["chair", "amber", "eventhallusion"])
def test_console_line_agrees_with_the_report(bench, name, tmp_path, capsys):
    """Issue 24 item 7: the console printed fractions (and AMBER one unnamed dimension) while report.md prints
    percentages; `mmpo eval NAME --config F` now prints the report's numbers, to its decimals."""
    import yaml

    from mmpo.app.cli import main

    mode = {} if name == "chair" else {"mode": "logits"}
    cfg = bench["cfg"](name, f"{name}_console", max_new_tokens=12, limit=2, **mode)
    raw = {k: v for k, v in json.loads(json.dumps(cfg.__dict__, default=lambda o: o.__dict__)).items()}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    assert main(["eval", name, "--config", str(tmp_path / f"{name}.yaml")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    text = (Path(cfg.out_dir) / "report.md").read_text()
    if name == "chair":
        shown = [f"{100 * m[k]:.2f}" for k in ("chair_s", "chair_i", "recall")]
        assert f"| {shown[0]} | {shown[1]} | {shown[2]} |" in text
        assert f"CHAIR_s {shown[0]} CHAIR_i {shown[1]} recall {shown[2]} (%)" in line and "lemmatizer table" in line
    elif name == "amber":  # limit 2: an attribute and a relation question, so no overall
        assert "overall" not in m and "no overall" in line
        for dim in ("attribute", "relation"):
            assert f"{dim} accuracy {m[dim]['accuracy']:.1f} F1 {m[dim]['f1']:.1f}" in line
            assert f"| {dim} | {m[dim]['accuracy']:.1f} |" in text
    else:
        assert f"accuracy {100 * m['accuracy']:.2f} (" in line and f"| **overall** | {100 * m['accuracy']:.2f} |" in text


@pytest.mark.parametrize("name,image", [("chair", "../x.jpg"), ("amber", "/etc/passwd")])
def test_image_names_may_not_leave_image_root(bench, name, image, tmp_path):
    if name == "chair":
        gt = tmp_path / "gt.jsonl"
        gt.write_text(json.dumps({"image_id": 1, "gt_objects": ["dog"], "image": image}) + "\n")
        cfg = replace(bench["cfg"](name, "escape"), annotations=str(gt), captions="")
    else:
        query = json.loads(Path(bench["data"]["amber"]["questions"]).read_text())
        query[1]["image"] = image
        (tmp_path / "q.json").write_text(json.dumps(query))
        cfg = replace(bench["cfg"](name, "escape"), questions=str(tmp_path / "q.json"))
    with pytest.raises(ValueError, match="escapes the media root"):
        bench["run"](name, cfg)
    assert not Path(cfg.out_dir).exists()  # refused before anything ran


def test_configs_refuse_unknown_modes_and_options():
    with pytest.raises(ConfigError, match="unknown key"):
        load(ChairEvalConfig, None, ["mode=logits"])  # captions are generated: CHAIR has no mode to set
    for cls in (AmberEvalConfig, EventHallusionEvalConfig):
        with pytest.raises(ConfigError, match="mode"):
            load(cls, None, ["mode=beam"])
    for cls in (ChairEvalConfig, AmberEvalConfig, EventHallusionEvalConfig):
        with pytest.raises(ConfigError, match="on_bad_media"):
            load(cls, None, ["on_bad_media=ignore"])


# ---------------------------------------------------------------- the registry


def test_one_registry_serves_the_cli_validate_and_the_demo(capsys):
    from mmpo.app import cli as mmpo_cli

    runnable = {n for n, e in EVALUATORS.items() if e.config is not None}
    assert runnable == {"pope", "videohallucer", "chair", "amber", "eventhallusion", "hallusionbench"}
    for name in runnable:  # each has a runner, a file scorer and shipped configs that validate as its class
        e = EVALUATORS[name]
        assert callable(e.run) and callable(e.score_file)
        shipped = [p for p in (REPO / "configs" / "eval").glob("*.yaml") if p.stem.split("_")[0] == name]
        assert shipped and all(mmpo_cli.config_class_for(p) is e.config for p in shipped)
    with pytest.raises(ValueError, match="cannot tell which benchmark"):
        mmpo_cli.config_class_for(Path("configs/eval/mystery.yaml"))
    # `mmpo eval NAME` dispatches through the registry, and its help names every entry
    for name in EVALUATORS:
        with pytest.raises(SystemExit) as exit_:
            mmpo_cli.main(["eval", name, "--help"])
        assert exit_.value.code == 0 and f"mmpo eval {name}" in capsys.readouterr().out
    assert mmpo_cli.main(["eval", "halluc"]) == 1 and str(sorted(EVALUATORS)) in capsys.readouterr().err
    help_text = next(a.help for a in mmpo_cli.make_parser()._subparsers._group_actions[0].choices["eval"]._actions
                     if a.dest == "benchmark")
    assert help_text.split(" | ") == list(EVALUATORS)
    import mmpo.eval as package

    assert package.pope_runner.run_pope is EVALUATORS["pope"].run and package.pope_build.build_files  # the demo's use
