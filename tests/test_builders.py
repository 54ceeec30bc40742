"""Builders end to end on tiny media, models and CLIP: outputs validate and train, specs are
deterministic, the prefilter and the judge parser work, voting follows agreement, resume is exact,
bad media are skipped and counted, N shard processes (one killed and rerun) merge into one process's bytes."""

import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import COLORS, color_image, tiny_model, toy_pairs, toy_sft
from videos import make_frames, write_clip

from mmpo.app.cli import main
from mmpo.builders import BUILDERS
from mmpo.builders.augment import AugmentConfig, sample_specs
from mmpo.builders.augment import build as build_augment
from mmpo.builders.common import LOOKAHEAD, prepared_items, valid_lines
from mmpo.builders.difficulty import DifficultyConfig, vote
from mmpo.builders.difficulty import build as build_difficulty
from mmpo.builders.judging import parse_judgement, rubric_judge, yes_no_score
from mmpo.builders.self_qa import SelfQAConfig
from mmpo.builders.self_qa import build as build_self_qa
from mmpo.config import TrainConfig, load
from mmpo.metrics import read_metrics
from mmpo.records import (
    RecordError,
    SFTRecord,
    default_media_root,
    read_pairs,
    to_trl_dataset,
    to_trl_rows,
    write_jsonl,
    write_manifest,
)
from mmpo.trainer import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "build"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmpo.clip import make_tiny_clip

    root = tmp_path_factory.mktemp("builders")
    (root / "v").mkdir()
    recs = []
    for i in range(4):
        write_clip(root / "v" / f"{i}.mp4", make_frames(T=8, H=64, W=64, seed=i))
        recs.append(SFTRecord(f"v{i}", (f"v/{i}.mp4",), "video", "describe the video .", "a square moves right"))
    (root / "v" / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)  # truncated mp4
    recs.insert(2, SFTRecord("bad", ("v/bad.mp4",), "video", "describe the video .", "a square moves right"))
    write_jsonl(root / "video_sft.jsonl", recs)
    return {"root": root, "video_sft": root / "video_sft.jsonl", "clip": make_tiny_clip(root / "clip"),
            "image_sft": toy_sft(root, n=6), "image_pairs": toy_pairs(root, n=8),
            "video_model": tiny_model("llava_next_video", root), "image_model": tiny_model("llava", root)}


def _train(world, model, pairs, out, loss, *extra):
    """A short run on a builder's output as written: no data.media_root (the manifest says where the media are)."""
    cfg = load(TrainConfig, None, [f"model.path={model}", f"data.train={pairs}", f"output_dir={out}", "progress=false",
                                   "lora.r=4", "max_steps=2", "batch_size=2", "model.num_frames=4", f"loss={loss}", *extra])
    train(cfg)
    rows = read_metrics(out)
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)


def _aug_cfg(world, out, *extra):
    return load(AugmentConfig, None, [f"in_sft={world['video_sft']}", f"out_dir={out}", "progress=false", *extra])


# -- augment --------------------------------------------------------------------------------------

def test_augment_video_end_to_end_skips_bad_clip_and_trains(world, tmp_path):
    out = build_augment(_aug_cfg(world, tmp_path / "aug", f"clip_model={world['clip']}", "max_similarity=0.99999"))
    pairs = read_pairs(out / "pairs.jsonl", media_root=world["root"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(pairs) == 4 and manifest["counts"]["skipped"] == 1 and manifest["counts"]["inputs"] == 5
    assert manifest["skipped"][0]["id"] == "bad" and "bad.mp4" in manifest["skipped"][0]["reason"]
    for p in pairs:
        assert p.chosen == p.rejected and p.rejected_bag and len(p.scores["clip_sim"]) == len(p.rejected_bag)
    _train(world, world["video_model"], out / "pairs.jsonl", tmp_path / "run", "[{name: pami, params: {delta_min: 0.0}}]")


def test_cli_build_train_eval_with_no_media_root(world, tmp_path):
    """The user's first hour: `mmpo build augment` on a mixed video + image SFT file in one folder, output in
    another, then `mmpo train` with the shipped PaMi config and no data.media_root, then `mmpo eval pope`
    (logits mode) on the trained adapter."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    (data / "media").mkdir(parents=True)
    recs = []
    for i in range(2):
        write_clip(data / "media" / f"clip{i}.mp4", make_frames(T=8, H=64, W=64, seed=10 + i))
        recs.append(SFTRecord(f"v{i}", (f"media/clip{i}.mp4",), "video", "describe the video .", "a square moves right"))
        color_image(COLORS[i], seed=i).save(data / "media" / f"img{i}.png")
        recs.append(SFTRecord(f"i{i}", (f"media/img{i}.png",), "image", "what color is the square ?", COLORS[i]))
    write_jsonl(data / "sft.jsonl", recs)
    assert main(["build", "augment", "--config", str(REPO / "configs/build/augment_video.yaml"),
                 f"in_sft={data / 'sft.jsonl'}", f"out_dir={runs / 'aug'}", "num_workers=0", "progress=false"]) == 0
    manifest = json.loads((runs / "aug" / "manifest.json").read_text())
    assert manifest["media_root"] == "../../data" and manifest["counts"]["pairs"] == 4  # relative: moves with the tree

    model = world["video_model"]  # LLaVA-NeXT-Video takes images and videos
    assert main(["train", "--config", str(REPO / "configs/train/pami_video.yaml"), f"model.path={model}",
                 f"data.train={runs / 'aug' / 'pairs.jsonl'}", f"output_dir={runs / 'pami'}", "model.dtype=float32",
                 "precision=fp32", "model.num_frames=4", "lora.r=4", "grad_accum=1", "max_steps=4", "progress=false",
                 "gradient_checkpointing=false"]) == 0
    rows = read_metrics(runs / "pami")
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)

    questions = data / "pope.json"
    questions.write_text("".join(json.dumps({"question_id": q, "image": f"img{q % 2}.png", "label": "yes" if q < 2 else "no",
                                             "text": f"is there a {COLORS[q % 2 if q < 2 else 3]} square ?"}) + "\n"
                                 for q in range(4)))
    assert main(["eval", "pope", "--config", str(REPO / "configs/eval/pope_logits.yaml"), f"model.path={model}",
                 f"model.adapter={runs / 'pami' / 'adapter'}", f"questions=[{questions}]",
                 f"image_root={data / 'media'}", f"out_dir={runs / 'pope'}", "batch_size=4"]) == 0
    metrics = json.loads((runs / "pope" / "metrics.json").read_text())
    assert len((runs / "pope" / "predictions.jsonl").read_text().splitlines()) == 4
    # the run's metrics are what the reference scorer gives for the answers file it wrote
    from mmpo.eval.pope_metrics import score_answers_file
    rescored = score_answers_file(questions, runs / "pope" / "answers_pope.jsonl", "official")
    assert metrics["accuracy"] == pytest.approx(rescored["accuracy"]) and metrics["f1"] == pytest.approx(rescored["f1"])


def test_default_media_root_explicit_then_manifest_then_folder(tmp_path):
    media, built = tmp_path / "proj" / "media", tmp_path / "proj" / "runs" / "set"
    media.mkdir(parents=True)
    built.mkdir(parents=True)
    assert default_media_root(built / "pairs.jsonl") == built  # no manifest: the file's own folder
    write_manifest(built, {}, {}, 0, media_root=media)
    assert default_media_root(built / "pairs.jsonl") == media
    assert default_media_root(built / "pairs.jsonl", explicit=tmp_path) == tmp_path  # the user's value wins
    # the whole project moved (another machine, a container mount): the relative entry follows it
    (tmp_path / "proj").rename(tmp_path / "moved")
    assert default_media_root(tmp_path / "moved/runs/set/pairs.jsonl") == tmp_path / "moved/media"
    # the set folder alone moved, media left at the recorded absolute path: that one is used
    (tmp_path / "moved").rename(tmp_path / "proj")
    shutil.move(built, tmp_path / "elsewhere")
    assert default_media_root(tmp_path / "elsewhere/pairs.jsonl") == media
    (tmp_path / "elsewhere/manifest.json").write_text("{not json")
    with pytest.raises(RecordError, match="elsewhere/manifest.json: invalid JSON"):
        default_media_root(tmp_path / "elsewhere/pairs.jsonl")


def test_augment_specs_are_deterministic_per_seed_and_record():
    cfg = AugmentConfig(seed=3)
    a, b = sample_specs(cfg, "rec1", "video"), sample_specs(cfg, "rec1", "video")
    assert a == b and len(a) == 4 and len({s.op for s in a}) == 4
    assert sample_specs(cfg, "rec2", "video") != a
    assert sample_specs(AugmentConfig(seed=4), "rec1", "video") != a
    assert all(s.op in cfg.image_ops for s in sample_specs(cfg, "rec1", "image"))


def test_prefilter_drops_identity_like_augmentation(world, tmp_path):
    out = build_augment(_aug_cfg(world, tmp_path / "a", f"clip_model={world['clip']}", "max_similarity=0.99999",
                                 "video_ops=[gaussian_noise, temporal_reverse]", "num_candidates=2",
                                 "op_params={gaussian_noise: {std: 0.0}}"))
    pairs = read_pairs(out / "pairs.jsonl")
    assert len(pairs) == 4
    for p in pairs:  # the zero-noise copy is pixel-identical (similarity 1.0); the reversal survives
        assert [s.op for s in p.rejected_bag] == ["temporal_reverse"]
        assert p.scores["clip_sim_dropped"][0] > 0.99999 > p.scores["clip_sim"][0]
    assert json.loads((out / "manifest.json").read_text())["counts"]["candidates_dropped"] == 4


def test_augment_image_materialize_writes_rejected_media_and_trains(world, tmp_path):
    root = world["root"]
    cfg = load(AugmentConfig, None, [f"in_sft={world['image_sft']}", f"out_dir={root / 'mat'}", "progress=false",
                                     "materialize=true", "fresh=true"])
    out = build_augment(cfg)
    pairs = read_pairs(out / "pairs.jsonl", media_root=root)
    assert len(pairs) == 6 and all(p.rejected_media and p.rejected_bag is None for p in pairs)
    _train(world, world["image_model"], out / "pairs.jsonl", tmp_path / "run", "[{name: mdpo_conditional}]")


def test_augment_materialize_into_a_folder_outside_the_media_root(world, tmp_path):
    """out_dir need not sit under the media root: the set's root becomes out_dir, the input's media are read through
    the link out_dir/source, and the set trains with no data.media_root (issue 24 item 10)."""
    out_dir = tmp_path / "elsewhere" / "mat"
    cfg = load(AugmentConfig, None, [f"in_sft={world['image_sft']}", f"out_dir={out_dir}", "progress=false",
                                     "materialize=true", "fresh=true"])
    out = build_augment(cfg)
    assert (out / "source").resolve() == Path(world["root"]).resolve()
    pairs = read_pairs(out / "pairs.jsonl", media_root=default_media_root(out / "pairs.jsonl", ""))
    assert len(pairs) == 6
    for p in pairs:
        assert p.media[0].startswith("source/") and p.rejected_media[0].startswith("media/")
        assert (out / p.media[0]).is_file() and (out / p.rejected_media[0]).is_file()
    _train(world, world["image_model"], out / "pairs.jsonl", tmp_path / "run", "[{name: mdpo_conditional}]")


class Crash(RuntimeError):
    pass


def _crash_after(n):
    def hook(i):
        if i == n:
            raise Crash("killed")
    return hook


def test_augment_kill_and_resume_equals_uninterrupted(world, tmp_path):
    whole = build_augment(_aug_cfg(world, tmp_path / "whole", "num_workers=2"))
    with pytest.raises(Crash):
        build_augment(_aug_cfg(world, tmp_path / "broken", "num_workers=2"), on_record=_crash_after(2))
    # a crash between writing pairs and marking done: the pair is on disk, the id is not in done.txt
    done = (tmp_path / "broken" / "done.txt").read_text().splitlines()
    (tmp_path / "broken" / "done.txt").write_text("\n".join(done[:-1]) + "\n")
    with open(tmp_path / "broken" / "pairs.jsonl", "a") as f:
        f.write('{"id": "torn')  # and a half-written line
    resumed = build_augment(_aug_cfg(world, tmp_path / "broken"))
    assert (resumed / "pairs.jsonl").read_text() == (whole / "pairs.jsonl").read_text()
    counts = [json.loads((d / "manifest.json").read_text())["counts"] for d in (whole, resumed)]
    assert counts[0] == counts[1]



def _upper_unless_b(item: str) -> str:
    if item == "b":  # a worker killed for memory, or a decoder's segfault
        os.kill(os.getpid(), signal.SIGKILL)
    return item.upper()


def test_a_worker_process_that_dies_stops_the_build_naming_the_item():
    """multiprocessing.Pool waited forever for a dead worker's item; the build now fails at once and says why."""
    assert list(prepared_items(["a", "c", "d"], _upper_unless_b, 2)) == [("a", "A"), ("c", "C"), ("d", "D")]
    with pytest.raises(RuntimeError, match="worker process died while preparing item 'b'.*num_workers=0"):
        list(prepared_items(["b", "c"], _upper_unless_b, 2))


def _mark_prepared(item: str, folder: Path) -> str:
    (folder / item).touch()
    return item


def test_workers_prepare_only_a_few_items_ahead_of_the_writer(tmp_path):
    """Prepared pixels must not pile up in memory while the main process writes: workers stay a bounded
    number of items ahead, however long the writer takes."""
    items = [f"item{i:02d}" for i in range(40)]
    stream = prepared_items(items, functools.partial(_mark_prepared, folder=tmp_path), num_workers=2)
    assert next(stream) == ("item00", "item00")
    time.sleep(1.0)  # ample time for idle workers to prepare all 40 items, were they given them
    assert len(list(tmp_path.iterdir())) <= LOOKAHEAD * 2 + 1
    assert [item for item, _ in stream] == items[1:]


def test_resuming_keeps_every_whole_line_of_a_pair_file_and_cuts_only_a_torn_one(tmp_path):
    """Lines hold U+2028 / U+0085 raw (json.dumps with ensure_ascii=False): `str.splitlines` cut such a line in
    two, and the resume then dropped it and every line after it; any non-ASCII text made each open rewrite the file."""
    path = tmp_path / "pairs.jsonl"
    whole = ['{"id": "a", "chosen": "a cat\u2028on a mat"}', '{"id": "b", "chosen": "caf\u00e9 \u0085"}']
    path.write_text("".join(x + "\n" for x in whole) + '{"id": "c", "cho', encoding="utf-8")
    assert valid_lines(path) == whole
    assert path.read_text(encoding="utf-8") == "".join(x + "\n" for x in whole)  # the torn line, and only it, cut
    before = path.stat().st_mtime_ns
    assert valid_lines(path) == whole and path.stat().st_mtime_ns == before  # a whole file is left as it is


def test_a_build_folder_continues_only_with_the_settings_it_started_with(world, tmp_path):
    """A rerun with num_candidates 3 once added bags of 3 to a folder of bags of 4 (resumed items mixed both) and
    its manifest named only the new setting."""
    out = tmp_path / "aug"
    before = (build_augment(_aug_cfg(world, out)) / "pairs.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"started with other settings \(num_candidates: 4 -> 3\).*fresh=true"):
        build_augment(_aug_cfg(world, out, "num_candidates=3"))
    assert (out / "pairs.jsonl").read_bytes() == before
    moved = tmp_path / "moved.jsonl"  # the same input elsewhere, other workers: the same build
    shutil.copy(world["video_sft"], moved)
    build_augment(load(AugmentConfig, None, [f"in_sft={moved}", f"out_dir={out}", "progress=false",
                                             f"media_root={world['video_sft'].parent}", "num_workers=2"]))
    assert (out / "pairs.jsonl").read_bytes() == before
    fresh = build_augment(_aug_cfg(world, out, "num_candidates=3", "fresh=true"))
    assert all(len(p.rejected_bag) == 3 for p in read_pairs(fresh / "pairs.jsonl", media_root=world["root"]))


def test_a_missing_input_names_its_key(world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"in_sft: no such file or folder '.*nope.jsonl'"):  # was a bare [Errno 2]
        build_augment(load(AugmentConfig, None, [f"in_sft={tmp_path / 'nope.jsonl'}", f"out_dir={tmp_path / 'a'}"]))

# -- self_qa --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Relevance: 7, Accuracy: 8, Temporal grounding: 6, Clarity: 9", [7, 8, 6, 9]),
    ("relevance=7/10 accuracy=8/10 temporal_grounding=6/10 clarity=10/10", [7, 8, 6, 10]),
    ('{"relevance": 7, "accuracy": 8.5, "temporal_grounding": 6, "clarity": 9}', [7, 8.5, 6, 9]),
    ("Relevance (1-10): 3\nAccuracy (1-10): 4\nTemporal (1-10): 5\nClarity (1-10): 6", [3, 4, 5, 6]),
    ("7 8 6 9", [7, 8, 6, 9]),
    ("7/10, 8/10, 6/10, 10/10.", [7, 8, 6, 10]),
    ("Relevance: 7, Accuracy: 8, Clarity: 9", None),               # a criterion missing
    ("Relevance: 11, Accuracy: 8, Temporal: 6, Clarity: 9", None),  # out of range
    ("Relevance: 0 Accuracy: 8 Temporal grounding: 6 Clarity: 9", None),
    ("7 8 6", None), ("1 2 3 4 5", None), ("the square is red", None), ("", None),
])
def test_judge_parser(text, expected):
    got = parse_judgement(text)
    assert (got if got is None else list(got.values())) == expected


def _fake_judge(prompts, media, temperature, seed):
    """Parsable rubric text: longer answers score higher, so the ranking is deterministic."""
    outs = []
    for p in prompts:
        answer = p.split("Answer:")[1].split("Give four")[0]
        s = min(10, 1 + len(answer.split()))
        outs.append(f"Relevance: {s}, Accuracy: {s}, Temporal grounding: {s}, Clarity: {s}" if s != 3 else "garbage")
    return outs


def test_self_qa_video_with_fake_judge_end_to_end(world, tmp_path):
    cfg = load(SelfQAConfig, None, [f"in_sft={world['video_sft']}", f"out_dir={tmp_path / 'sq'}", "progress=false",
                                    f"model.path={world['video_model']}", "model.num_frames=4", "max_new_tokens=8",
                                    "questions_per_item=2", "temperatures=[0.7, 1.0, 1.3, 1.6]", "min_gap=0"])
    out = build_self_qa(cfg, judge=rubric_judge(_fake_judge))
    pairs = read_pairs(out / "pairs.jsonl", media_root=world["root"])
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["answers"] == 4 * 2 * 4 and c["skipped"] == 1 and pairs
    assert len(pairs) + sum(v for k, v in c.items() if k.startswith("dropped_")) == 8
    for p in pairs:
        assert p.scores["judge_chosen"] > p.scores["judge_rejected"] and p.chosen != p.rejected
        assert len(p.chosen.split()) > len(p.rejected.split())
    _train(world, world["video_model"], out / "pairs.jsonl", tmp_path / "run", "[{name: dpo}]")


def test_self_qa_clip_order_must_agree(world, tmp_path):
    clip = lambda media, texts: [-len(t) for t in texts]  # noqa: E731  CLIP prefers the shorter answer
    from mmpo.builders.self_qa import select_pair

    cfg = SelfQAConfig(min_gap=1.0)
    judged = [2.0, 9.0, 5.0]
    answers = ["a", "a red square moves", "a square"]
    assert select_pair(answers, judged, clip(None, answers), cfg) == (None, "clip_disagrees")
    pair, _ = select_pair(answers, judged, [0.1, 0.3, 0.2], cfg)
    assert pair["chosen"] == answers[1] and pair["rejected"] == "a" and pair["scores"]["delta"] == pytest.approx(0.2)
    judged_close = [5.0, 5.5, 5.0]
    assert select_pair(answers, judged_close, None, cfg) == (None, "judge_gap_small")


def test_self_qa_clip_override_sees_the_question_and_filters(world, tmp_path):
    """`clip` replaces the CLIP check and gets the question: here it backs "yes" only for the square question,
    so only that question's pairs (judged yes > no) are kept and carry its scores as the delta."""
    seen = []

    def clip(media, question, answers):
        seen.append(question)
        sign = 1.0 if "square" in question else -1.0
        return [sign * (1.0 if a == "yes" else -1.0) for a in answers]

    def generate(prompts, media, temperature, seed):
        return ["yes" if temperature < 1 else "no" for _ in prompts]

    judge = lambda qa, media, word: [9.0 if a == "yes" else 2.0 for _, a in qa]  # noqa: E731
    ask = lambda index, media, word: ["Is there a square ?", "Is there a ring ?"]  # noqa: E731
    cfg = load(SelfQAConfig, None, [f"in_sft={world['image_sft']}", f"out_dir={tmp_path / 'clip'}", "progress=false",
                                    "temperatures=[0.5, 1.5]"])
    out = build_self_qa(cfg, generate=generate, judge=judge, ask=ask, clip=clip)
    pairs = read_pairs(out / "pairs.jsonl", media_root=world["root"])
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert pairs and all(p.prompt == "Is there a square ?" and p.scores["delta"] == 2.0 for p in pairs)
    assert counts["dropped_clip_disagrees"] == len(pairs) and set(seen) == {"Is there a square ?", "Is there a ring ?"}


def test_yes_no_judge_scores_from_the_models_logits(world, tmp_path):
    """The real tiny model as generator and yes/no judge: no judgement is unparsable, scores lie in 1-10."""
    assert yes_no_score(0.0) == 5.5 and yes_no_score(50.0) == pytest.approx(10.0) and yes_no_score(-50.0) == 1.0
    cfg = load(SelfQAConfig, None, [f"in_sft={world['video_sft']}", f"out_dir={tmp_path / 'yn'}", "progress=false",
                                    f"model.path={world['video_model']}", "model.num_frames=4", "max_new_tokens=6",
                                    "questions_per_item=1", "temperatures=[0.7, 1.3]", "min_gap=0", "judge=yes_no"])
    out = build_self_qa(cfg)
    c = json.loads((out / "manifest.json").read_text())["counts"]
    assert c["answers"] == 4 * 2 and c.get("judge_unparsable", 0) == 0
    for p in read_pairs(out / "pairs.jsonl", media_root=world["root"]):
        assert 1.0 <= p.scores["judge_rejected"] <= p.scores["judge_chosen"] <= 10.0


def test_self_qa_question_writer_override(world, tmp_path):
    """`ask` replaces the model's question writing: its questions (blank ones dropped) are the ones answered
    and stored as the pairs' prompts; the generator never sees a question-writing instruction."""
    seen = []

    def ask(index, media, word):
        return [f"Is there a square in the {word} number {index} ?", "  "]

    def generate(prompts, media, temperature, seed):
        seen.extend(prompts)
        return ["yes" if temperature < 1 else "no" for _ in prompts]

    judge = lambda qa, media, word: [9.0 if a == "yes" else 2.0 for _, a in qa]  # noqa: E731
    cfg = load(SelfQAConfig, None, [f"in_sft={world['image_sft']}", f"out_dir={tmp_path / 'ask'}", "progress=false",
                                    "questions_per_item=2", "temperatures=[0.5, 1.5]"])
    out = build_self_qa(cfg, generate=generate, judge=judge, ask=ask)
    pairs = read_pairs(out / "pairs.jsonl", media_root=world["root"])
    assert pairs and all(p.prompt.startswith("Is there a square in the image number") for p in pairs)
    assert all((p.chosen, p.rejected) == ("yes", "no") for p in pairs)
    assert seen and all(p.startswith("Is there a square") for p in seen)
    assert json.loads((out / "manifest.json").read_text())["counts"]["answers"] == 2 * len(pairs)


def test_self_qa_critique_refine_pairs_refined_over_first(world, tmp_path):
    def fake(prompts, media, temperature, seed):
        return [("better answer : " + p.split("First answer:")[1].split("Critique:")[0].strip()) if "First answer:" in p
                else "the critique" if "Check the answer" in p else "a first answer" for p in prompts]

    cfg = load(SelfQAConfig, None, [f"in_sft={world['image_sft']}", f"out_dir={tmp_path / 'cr'}", "progress=false",
                                    "preset=critique_refine", "questions_per_item=1"])
    pairs = read_pairs(build_self_qa(cfg, generate=fake) / "pairs.jsonl", media_root=world["root"])
    assert len(pairs) == 6
    assert all(p.chosen == "better answer : a first answer" and p.rejected == "a first answer" for p in pairs)
    assert all(p.meta["critique"] == "the critique" for p in pairs)


def test_self_qa_batches_model_calls_across_items(world, tmp_path):
    """batch_size // questions_per_item items are questioned, answered and judged together."""
    calls = []

    def generate(prompts, media, temperature, seed):
        assert len(media) == len(prompts)
        calls.append(len(prompts))
        return [f"answer {'a ' * (i % 3)}{temperature}" for i in range(len(prompts))]

    def judged(prompts, media, temperature, seed):
        calls.append(("judge", len(prompts)))
        return _fake_judge(prompts, media, temperature, seed)

    def run(batch_size):
        calls.clear()
        out = build_self_qa(load(SelfQAConfig, None, [
            f"in_sft={world['image_sft']}", f"out_dir={tmp_path / str(batch_size)}", "progress=false",
            "questions_per_item=2", "temperatures=[0.5, 1.0]", "min_gap=0", f"batch_size={batch_size}"]),
            generate=generate, judge=rubric_judge(judged))
        return json.loads((out / "manifest.json").read_text())["counts"]

    batched = run(4)  # 6 images in 3 blocks of 2: per block 1 question call, 2 answer calls, 1 judge call
    assert calls == [4, 4, 4, ("judge", 8)] * 3
    one_by_one = run(2)
    assert calls == [2, 2, 2, ("judge", 4)] * 6
    assert batched["answers"] == one_by_one["answers"] == 6 * 2 * 2


# -- difficulty -----------------------------------------------------------------------------------

def test_vote_weights_follow_agreement():
    rng = np.random.default_rng(0)
    n = 1000
    good = np.where(np.arange(n) < 900, 1.0, -1.0) * rng.uniform(0.5, 1.5, n)    # agrees on 90%
    coin = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 1.5, n)  # agrees on 50%
    weights, z, fused = vote({"clip": good, "gen": coin})
    assert weights["clip"] == pytest.approx(0.9 / 1.4) and weights["gen"] == pytest.approx(0.5 / 1.4)
    assert abs(z["clip"].mean()) < 1e-9 and z["clip"].std() == pytest.approx(1.0)
    assert np.allclose(fused, weights["clip"] * z["clip"] + weights["gen"] * z["gen"])
    _, _, phi = vote({"clip": good, "gen": coin}, use_phi=True)
    assert ((phi > 0) & (phi < 1)).all()


def test_difficulty_image_end_to_end_resumes_and_trains(world, tmp_path):
    root = world["root"]
    # a missing image: skipped and named in the manifest, never fatal
    lines = world["image_pairs"].read_text().splitlines()
    bad = json.loads(lines[0]) | {"id": "missing", "media": ["img/nope.png"]}
    src = tmp_path / "pairs.jsonl"
    src.write_text("\n".join(lines + [json.dumps(bad)]) + "\n")
    args = [f"in_pairs={src}", f"media_root={root}", f"clip_model={world['clip']}", f"model.path={world['image_model']}",
            "batch_size=3", "progress=false", "write_weight=true"]
    whole = build_difficulty(load(DifficultyConfig, None, args + [f"out_dir={tmp_path / 'whole'}"]))
    with pytest.raises(Crash):
        build_difficulty(load(DifficultyConfig, None, args + [f"out_dir={tmp_path / 'b'}"]), on_record=_crash_after(4))
    resumed = build_difficulty(load(DifficultyConfig, None, args + [f"out_dir={tmp_path / 'b'}"]))
    assert (resumed / "pairs.jsonl").read_text() == (whole / "pairs.jsonl").read_text()
    pairs = read_pairs(whole / "pairs.jsonl", media_root=root)
    manifest = json.loads((whole / "manifest.json").read_text())
    assert len(pairs) == 8 and manifest["skipped"][0]["id"] == "missing"
    assert sum(manifest["vote_weights"].values()) == pytest.approx(1.0)
    for p in pairs:
        s = p.scores
        assert s["delta"] == s["fused"] and p.weight == pytest.approx(1 + abs(s["delta"]))
        assert s["fused"] == pytest.approx(sum(manifest["vote_weights"][k] * s[f"{k}_z"] for k in ("clip", "gen")), abs=1e-5)
    assert all((whole / f).is_file() for f in ("clip_margin.png", "gen_margin.png", "fused.png"))
    _train(world, world["image_model"], whole / "pairs.jsonl", tmp_path / "run", "[{name: dadpo}]")


# -- export ---------------------------------------------------------------------------------------

def test_to_trl_dataset_trains_one_step_in_trls_dpo_trainer(world, tmp_path):
    """The exported set goes into TRL's DPOTrainer as is: its chat template, one image per row, answer + EOS."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    pairs = read_pairs(world["image_pairs"])[:4]
    proc = AutoProcessor.from_pretrained(world["image_model"])
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-2,
                     use_cpu=True, activation_checkpointing=False, report_to="none", save_strategy="no",
                     disable_tqdm=True, max_length=None)
    trainer = DPOTrainer(model=AutoModelForImageTextToText.from_pretrained(world["image_model"]), args=args,
                         train_dataset=to_trl_dataset(pairs, world["root"]), processing_class=proc,
                         peft_config=LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["pixel_values"].shape[0] == 4  # 2 pairs x (chosen, rejected), one image each
    answers = {f"{a} </s>" for p in pairs for a in (p.chosen, p.rejected)}
    for ids, mask, done in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        prompt = proc.tokenizer.decode(ids[mask.bool() & ~done.bool()])
        assert prompt.startswith("user : <image>") and prompt.endswith("what color is the square ? assistant :")
        assert proc.tokenizer.decode(ids[done.bool()]) in answers
    before = {n: w.detach().clone() for n, w in trainer.model.named_parameters() if w.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert trainer.state.global_step == 1 and any(not torch.equal(w, after[n]) for n, w in before.items())


def test_to_trl_rows_video_paths_and_refuses_media_rejections(world, tmp_path):
    out = build_augment(_aug_cfg(world, tmp_path / "aug"))
    bags = read_pairs(out / "pairs.jsonl")
    with pytest.raises(ValueError, match=f"pair {bags[0].id}: its rejection is in the media"):
        to_trl_rows(bags, world["root"])
    video = dataclasses.replace(bags[0], rejected="a square moves left", rejected_bag=None)
    row = to_trl_rows([video], world["root"])[0]
    assert row["images"] == [str(world["root"] / "v" / "0.mp4")]
    assert row["prompt"] == [{"role": "user", "content": "describe the video ."}]
    assert row["rejected"] == [{"role": "assistant", "content": "a square moves left"}]


def _image_pair_file(folder, n, bad=()):
    """`n` image pairs with answers of different lengths (so batches need padding), plus pairs on `bad` media."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        color_image(COLORS[i % 4], seed=i).save(folder / "img" / f"{i}.png")
        chosen = " ".join(["the square is", "it is", "a", ""][i % 4].split() + [COLORS[i % 4]])
        lines.append({"media": [f"img/{i}.png"], "media_type": "image", "prompt": "what color is the square ?",
                      "chosen": chosen, "rejected": "the square is " + COLORS[(i + 1) % 4] + " and small" * (i % 3)})
    for rel, media_type in bad:
        lines.append({"media": [rel], "media_type": media_type, "prompt": "what is shown ?", "chosen": "a square",
                      "rejected": "a circle"})
    write_jsonl(folder / "pairs.jsonl", lines)
    return folder / "pairs.jsonl"


def test_difficulty_skips_bad_media_among_good_ones(world, tmp_path):
    """A clip alone in its batch used to leave an empty video group behind (`list index out of range`)."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "bad.mp4").write_bytes((world["root"] / "v" / "bad.mp4").read_bytes())  # truncated mp4
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    src = _image_pair_file(tmp_path, 5, bad=[("v/bad.mp4", "video"), ("img/corrupt.png", "image")])
    out = build_difficulty(load(DifficultyConfig, None, [f"in_pairs={src}", f"out_dir={tmp_path / 'out'}",
                                                         f"model.path={world['video_model']}", "model.num_frames=4",
                                                         "batch_size=4", "progress=false", "plots=false"]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 2 and manifest["counts"]["scored"] == 5
    assert sorted(s["reason"].split(":")[0] for s in manifest["skipped"]) == ["img/corrupt.png", "v/bad.mp4"]
    assert len(read_pairs(out / "pairs.jsonl", media_root=tmp_path)) == 5


def test_difficulty_resume_is_byte_identical_in_bf16(world, tmp_path):
    """Batches are cut by input position, and a batch cut short by a crash is re-scored whole on resume:
    every pair is scored in the same batch, with the same padding, as in an uninterrupted run."""
    src = _image_pair_file(tmp_path, 8)
    args = [f"in_pairs={src}", f"model.path={world['image_model']}", "model.dtype=bfloat16", "batch_size=3",
            "progress=false", "plots=false"]
    whole = build_difficulty(load(DifficultyConfig, None, args + [f"out_dir={tmp_path / 'whole'}"]))
    with pytest.raises(Crash):  # after the first pair of the second batch
        build_difficulty(load(DifficultyConfig, None, args + [f"out_dir={tmp_path / 'b'}"]), on_record=_crash_after(4))
    resumed = build_difficulty(load(DifficultyConfig, None, args + [f"out_dir={tmp_path / 'b'}"]))
    assert (resumed / "pairs.jsonl").read_bytes() == (whole / "pairs.jsonl").read_bytes()
    gen = [p.scores["gen_chosen"] for p in read_pairs(whole / "pairs.jsonl")]
    assert len(set(gen)) == 8  # real, distinct scores: the comparison is not of constants


def test_difficulty_clip_scores_in_one_batch_equal_the_per_answer_scorer(world):
    """The batched CLIP scores equal `frame_text_similarity` per answer: images and clips, a pair with its own
    rejected media, and an answer long enough to be scored by sentence."""
    from mmpo.builders.difficulty import clip_scores
    from mmpo.clip import load_clip
    from mmpo.records import PairRecord

    clip = load_clip(str(world["clip"]))
    long = " ".join(f"the {c} square sits in the middle of the picture ." for c in COLORS * 3)
    assert len(clip.split_text(long)) > 1
    clips = [make_frames(T=4, H=64, W=64, seed=s) for s in (1, 2)]
    image = color_image("red", size=64)
    rec = lambda c, r: PairRecord(id=c, media=("x",), media_type="image", prompt="?", chosen=c, rejected=r)  # noqa: E731
    batch = [(rec("a red square", long), image, image), (rec("it moves", "it stays"), clips[0], clips[1]),
             (rec(long, "a blue square"), clips[1], clips[1])]
    for (r, mw, ml), (cw, cl) in zip(batch, clip_scores(clip, batch)):
        assert cw == pytest.approx(float(clip.frame_text_similarity(mw, [r.chosen])[0]), abs=1e-5)
        assert cl == pytest.approx(float(clip.frame_text_similarity(ml, [r.rejected])[0]), abs=1e-5)


# -- shards ---------------------------------------------------------------------------------------

def _mmpo(*args: str, script: str = "-m mmpo") -> subprocess.Popen:
    """`python -m mmpo ARGS` (or a test script) as its own process, the way a user or a cluster job starts it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, *script.split(), *args], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _killed(name: str, after: int, *args: str) -> subprocess.Popen:
    """The builder in its own process, SIGKILLed by itself after committing `after` items (tests/killed_build.py)."""
    return _mmpo(name, str(after), *args, script=str(REPO / "tests" / "killed_build.py"))


def _wait(*procs: subprocess.Popen, code: int = 0) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == code, err[-3000:]


def _same_manifest(a: Path, b: Path) -> None:
    """Manifests equal in everything but where the set was written and how (out_dir, merge)."""
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        for key in ("out_dir", "merge"):
            m["config"].pop(key)
    assert ma == mb


def test_augment_in_two_shard_processes_equals_one_process_after_a_kill(world, tmp_path, capsys):
    """Two shards, each its own process, one killed mid-build (SIGKILL, then a torn line), rerun, merged: the same
    pairs.jsonl, done.txt and manifest as one process. Shard 0 gets the bad clip (skipped and named).
    (No CLIP prefilter: it would only add torch imports to every process; the difficulty test below has the
    model numbers.)"""
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    args = ["--config", str(CONFIGS / "augment_video.yaml"), f"in_sft={world['video_sft']}", "num_workers=0",
            "progress=false"]
    one = _mmpo("build", "augment", *args, f"out_dir={whole}")
    shard0 = _mmpo("build", "augment", *args, f"out_dir={sharded}", "shard=0/2")
    shard1 = _killed("augment", 1, *args, f"out_dir={sharded}", "shard=1/2")
    _wait(one, shard0)
    _wait(shard1, code=-signal.SIGKILL)
    assert main(["build", "augment", *args, f"out_dir={sharded}", "merge=true"]) == 1
    assert "shard 1/2 is unfinished (1 of 2 items left); rerun it with shard=1/2" in capsys.readouterr().err
    # worse than the kill itself: its last item's pair is on disk but not marked done, and a line is torn
    killed = sharded / "shards" / "1-of-2"
    (killed / "done.txt").write_text("")
    with open(killed / "pairs.jsonl", "a") as f:
        f.write('{"id": "torn')
    _wait(_mmpo("build", "augment", *args, f"out_dir={sharded}", "shard=1/2"))
    assert main(["build", "augment", *args, f"out_dir={sharded}", "merge=true"]) == 0
    for name in ("pairs.jsonl", "done.txt"):
        assert (sharded / name).read_bytes() == (whole / name).read_bytes()
    _same_manifest(whole, sharded)
    pairs = read_pairs(sharded / "pairs.jsonl")
    assert [p.meta["sft_id"] for p in pairs] == ["v0", "v1", "v2", "v3"] and all(len(p.rejected_bag) == 4 for p in pairs)
    assert json.loads((sharded / "manifest.json").read_text())["skipped"][0]["id"] == "bad"


def test_difficulty_in_two_shard_processes_equals_one_process_in_bf16_after_a_kill(world, tmp_path, capsys):
    """Shards own whole scoring batches (block b -> shard b % 2), so every bf16 batch is padded as in one process;
    a shard killed mid-batch rescores that batch whole. The merged, voted pairs are the one-process bytes.
    The shards are processes of their own; the one-process build, the rerun and the merge run here (the
    imports are paid for already)."""
    src = _image_pair_file(tmp_path, 9, bad=[("img/missing.png", "image")])
    whole, sharded, recut = tmp_path / "whole", tmp_path / "sharded", tmp_path / "recut"
    args = ["--config", str(CONFIGS / "difficulty_image.yaml"), f"in_pairs={src}", f"clip_model={world['clip']}",
            f"model.path={world['image_model']}", "batch_size=2", "progress=false", "plots=false"]
    shard0 = _mmpo("build", "difficulty", *args, f"out_dir={sharded}", "shard=0/2")
    shard1 = _killed("difficulty", 1, *args, f"out_dir={sharded}", "shard=1/2")  # after 1 pair of its first batch
    assert main(["build", "difficulty", *args, f"out_dir={whole}"]) == 0
    _wait(shard0)
    _wait(shard1, code=-signal.SIGKILL)
    assert main(["build", "difficulty", *args, f"out_dir={sharded}", "merge=true"]) == 1
    assert "shard 1/2 is unfinished (3 of 4 items left)" in capsys.readouterr().err
    assert main(["build", "difficulty", *args, f"out_dir={sharded}", "shard=1/2"]) == 0
    assert main(["build", "difficulty", *args, f"out_dir={sharded}", "merge=true"]) == 0
    assert (sharded / "pairs.jsonl").read_bytes() == (whole / "pairs.jsonl").read_bytes()
    _same_manifest(whole, sharded)
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["counts"]["scored"] == 9 and manifest["skipped"][0]["reason"].startswith("img/missing.png")
    gen = [p.scores["gen_chosen"] for p in read_pairs(sharded / "pairs.jsonl")]
    assert len(set(gen)) == 9  # real, distinct scores
    # the comparison can fail: batches cut another way give other bf16 numbers
    assert main(["build", "difficulty", *args, f"out_dir={recut}", "batch_size=3"]) == 0
    assert (recut / "pairs.jsonl").read_bytes() != (whole / "pairs.jsonl").read_bytes()
    # the voting settings are the merge's own: merging again re-votes the shards' scores, scoring nothing again
    assert main(["build", "difficulty", *args, f"out_dir={sharded}", "merge=true", "use_phi=true"]) == 0
    assert all(0 < p.scores["fused"] < 1 for p in read_pairs(sharded / "pairs.jsonl"))


def test_self_qa_in_two_shards_equals_one_process_after_a_crash(world, tmp_path):
    """The real tiny video model asks, samples (temperature > 0) and judges (yes/no logits) in blocks of 2 items;
    sampling seeds come from the block's input position, so shard 1/2 draws what one process draws."""
    args = [f"in_sft={world['video_sft']}", f"model.path={world['video_model']}", "model.num_frames=4", "max_new_tokens=6",
            "questions_per_item=1", "temperatures=[0.7, 1.3]", "min_gap=0", "judge=yes_no", "batch_size=2",
            "progress=false"]
    cfg = lambda *extra: load(SelfQAConfig, None, args + list(extra))  # noqa: E731
    whole = build_self_qa(cfg(f"out_dir={tmp_path / 'whole'}"))
    build_self_qa(cfg(f"out_dir={tmp_path / 'sharded'}", "shard=0/2"))
    with pytest.raises(Crash):  # shard 1/2 is the block (bad clip, v2): killed after committing the bad clip
        build_self_qa(cfg(f"out_dir={tmp_path / 'sharded'}", "shard=1/2"), on_record=_crash_after(1))
    build_self_qa(cfg(f"out_dir={tmp_path / 'sharded'}", "shard=1/2"))
    merged = build_self_qa(cfg(f"out_dir={tmp_path / 'sharded'}", "merge=true"))
    for name in ("pairs.jsonl", "done.txt"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes()
    _same_manifest(whole, merged)
    c = json.loads((merged / "manifest.json").read_text())["counts"]
    assert c["answers"] == 8 and c["skipped"] == 1 and c["pairs"] >= 1  # there is something to compare


@pytest.mark.slow
def test_augment_under_accelerate_launch_builds_one_shard_per_rank(world, tmp_path):
    """`accelerate launch --num_processes 2 -m mmpo build ...` with no shard set: each rank builds shard RANK/2."""
    args = ["-m", "mmpo", "build", "augment", "--config", str(CONFIGS / "augment_video.yaml"),
            f"in_sft={world['video_sft']}", "num_workers=0", "progress=false"]
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", "0", *args, f"out_dir={tmp_path / 'launched'}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(d.name for d in (tmp_path / "launched" / "shards").iterdir())
    assert shards == ["0-of-2", "1-of-2"]
    assert main(args[2:] + [f"out_dir={tmp_path / 'launched'}", "merge=true"]) == 0
    assert main(args[2:] + [f"out_dir={tmp_path / 'whole'}"]) == 0
    assert (tmp_path / "launched" / "pairs.jsonl").read_bytes() == (tmp_path / "whole" / "pairs.jsonl").read_bytes()


@pytest.mark.parametrize("text, env, expected", [
    ("1/4", {}, (1, 4)), (" 0 / 2 ", {}, (0, 2)), ("", {}, None), ("", {"WORLD_SIZE": "1", "RANK": "0"}, None),
    ("", {"WORLD_SIZE": "3", "RANK": "2"}, (2, 3)), ("0/1", {"WORLD_SIZE": "3", "RANK": "2"}, (0, 1)),
])
def test_parse_shard(text, env, expected):
    from mmpo.builders.shards import parse_shard

    got = parse_shard(text, env)
    assert (got if got is None else (got.index, got.count)) == expected


@pytest.mark.parametrize("text", ["4/4", "1/0", "-1/2", "1", "a/b", "1/2/3"])
def test_parse_shard_refuses(text):
    from mmpo.builders.shards import parse_shard

    with pytest.raises(ValueError, match="is not i/N with 0 <= i < N"):
        parse_shard(text, {})


def test_shard_per_launched_rank_and_what_merge_refuses(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "aug"
    args = ["build", "augment", "--config", str(CONFIGS / "augment_video.yaml"), f"in_sft={world['video_sft']}",
            f"out_dir={out}", "num_workers=0", "progress=false"]
    monkeypatch.setenv("WORLD_SIZE", "2")  # what `accelerate launch --num_processes 2` sets, rank 1 of them
    monkeypatch.setenv("RANK", "1")
    assert main(args) == 0
    assert json.loads((out / "shards/1-of-2/manifest.json").read_text())["shard"] == "1/2"
    assert main(args + ["merge=true"]) == 1
    assert "merge=true runs in one process" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert main(args + ["merge=true"]) == 1
    assert "shard 0/2 has not run; run it with shard=0/2" in capsys.readouterr().err
    assert main(args + ["shard=0/2", "seed=1"]) == 0
    assert main(args + ["merge=true"]) == 1
    assert "shard 0/2 was built with other settings (seed)" in capsys.readouterr().err
    assert main(args + ["shard=0/2", "fresh=true"]) == 0
    assert main(args + ["merge=true"]) == 0 and len(read_pairs(out / "pairs.jsonl")) == 4
    (out / "shards/0-of-3").mkdir()  # a stale start with another count
    assert main(args + ["merge=true"]) == 1
    assert "holds shards of [2, 3] processes" in capsys.readouterr().err


def test_sharded_build_refuses_repeated_input_ids(world, tmp_path):
    rec = SFTRecord("same", ("img/s0.png",), "image", "what color is the square ?", "red")
    write_jsonl(tmp_path / "sft.jsonl", [rec, dataclasses.replace(rec, answer="blue")])
    cfg = load(AugmentConfig, None, [f"in_sft={tmp_path / 'sft.jsonl'}", f"media_root={world['root']}",
                                     f"out_dir={tmp_path / 'out'}", "shard=0/2", "progress=false"])
    with pytest.raises(ValueError, match="sft.jsonl: id 'same' on lines 1 and 2: sharded builds need unique input ids"):
        build_augment(cfg)


# -- configs --------------------------------------------------------------------------------------

def test_every_shipped_build_config_loads_with_its_builder_class():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        name = next(k for k in BUILDERS if path.stem.startswith(k))
        load(BUILDERS[name][0], path)
        first = path.read_text().splitlines()[0]
        assert first.startswith("# mmpo build ") and f"--config configs/build/{path.name}" in first
