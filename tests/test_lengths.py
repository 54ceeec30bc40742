"""Sequence lengths: the pre-flight counts exactly what the collator builds; the default limit is the model's."""

import json

import pytest
from helpers import color_image, tiny_model, toy_pairs
from videos import make_frames, write_clip

from mmpo.batches import PairCollator
from mmpo.config import ModelConfig, TrainConfig, load
from mmpo.lengths import context_length, preflight, resolve_max_length
from mmpo.models import load_model
from mmpo.records import PairRecord, read_pairs, write_jsonl
from mmpo.trainer import train

# anyres families: the token count depends on the image's size, so the sizes differ (and one is portrait)
SIZES = [(32, 32), (64, 40), (40, 96), (100, 30)]


def _pairs(root, media_type):
    recs = []
    for i, (w, h) in enumerate(SIZES):
        if media_type == "image":
            rel = f"{i}.png"
            color_image("red", size=64, seed=i).resize((w, h)).save(root / rel)
        else:
            rel = f"{i}.mp4"
            write_clip(root / rel, make_frames(T=6 + i, H=64, W=64 + 32 * (i % 2), seed=i))
        recs.append(PairRecord(id=f"r{i}", media=(rel,), media_type=media_type, prompt="what color is it ?" * (i + 1),
                               chosen="red " * (i + 1), rejected="blue"))
    write_jsonl(root / "pairs.jsonl", recs)
    return read_pairs(root / "pairs.jsonl", root)


@pytest.mark.parametrize("family, media_type", [
    ("llava", "image"), ("llava_next", "image"), ("llava_onevision", "image"),
    ("llava_next_video", "video"), ("video_llava", "video"), ("llava_onevision", "video"),
])
def test_preflight_lengths_equal_the_collated_lengths(tmp_path, family, media_type):
    model_dir = tiny_model(family, tmp_path)
    _, processor = load_model(ModelConfig(path=str(model_dir)))
    records = _pairs(tmp_path, media_type)
    report = preflight(records, processor, tmp_path, num_frames=4, limit=10_000)
    collate = PairCollator(processor, str(tmp_path), num_frames=4, max_length=10_000)
    collated = []
    for rec in records:
        batch = collate([rec])
        answer = max(int(part["attention_mask"].sum()) for part in (batch.chosen, batch.rejected))
        collated.append(int(batch.prompt["attention_mask"].sum()) + answer)
    assert report.checked == report.total == len(records)
    assert report.longest == max(collated) and report.p50 == int(sorted(collated)[1] / 2 + sorted(collated)[2] / 2)
    if family in ("llava_next", "llava_onevision") and media_type == "image":
        assert len({c - len(r.prompt) for c, r in zip(collated, records, strict=True)}) > 1  # sizes matter here
    # the limit in between: exactly the longer records are over it
    limit = sorted(collated)[1]
    over = preflight(records, processor, tmp_path, num_frames=4, limit=limit).over
    assert sorted(n for _, n in over) == sorted(c for c in collated if c > limit)


def test_default_limit_is_the_models_context_and_long_records_stop_before_step_1(tmp_path, caplog):
    model_dir = tiny_model("llava", tmp_path)
    model, _ = load_model(ModelConfig(path=str(model_dir)))
    assert context_length(model) == 1024 and resolve_max_length(0, model) == 1024 and resolve_max_length(64, model) == 64
    assert TrainConfig().data.max_length == 0

    pairs = toy_pairs(tmp_path / "data")
    lines = pairs.read_text().splitlines()
    long = json.loads(lines[2])
    long["chosen"] = " ".join(["red"] * 1100)
    lines[2] = json.dumps(long)
    pairs.write_text("\n".join(lines) + "\n")
    cfg = load(TrainConfig, None, [f"model.path={model_dir}", f"data.train={pairs}", f"output_dir={tmp_path / 'run'}",
                                   "progress=false", "max_steps=1", "lora.r=4"])
    with pytest.raises(ValueError, match=r"pairs.jsonl:3: prompt with media \+ answer is 11\d\d tokens, more than "
                                         r"data.max_length=1024 \(raise data.max_length.*1 of 16 checked records"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped before step 1
    cfg.data.on_bad_record, cfg.max_steps, cfg.epochs = "skip", 0, 3.0  # the long record is drawn in 3 epochs
    with caplog.at_level("WARNING", logger="mmpo.batches"):
        train(cfg)
    assert sum("pairs.jsonl:3: prompt with media" in r.getMessage() for r in caplog.records) == 1  # logged once
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 * (16 // 4)
    assert summary["skipped_records"] == 1 and summary["skipped_by_reason"] == {"invalid_line": 0, "too_long": 1}


def test_large_files_are_sampled(tmp_path):
    model_dir = tiny_model("llava", tmp_path)
    _, processor = load_model(ModelConfig(path=str(model_dir)))
    records = read_pairs(toy_pairs(tmp_path / "data", n=40), tmp_path / "data")
    report = preflight(records, processor, tmp_path / "data", num_frames=4, limit=100, sample=10)
    assert (report.checked, report.total) == (10, 40)
    assert "10 of 40 records (a sample" in report.summary()
