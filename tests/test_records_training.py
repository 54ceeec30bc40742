"""Bad records meet training: caught before step 1 (or skipped and counted), the precomputed reference stays
exact, and lazy records work in DataLoader workers."""

import json
import math

import pytest
from helpers import tiny_model, toy_pairs

from mmpo.config import TrainConfig, load
from mmpo.metrics import read_metrics
from mmpo.records import RecordError
from mmpo.trainer import train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("records_training")
    return {"root": root, "model": tiny_model("llava", root), "pairs": toy_pairs(root / "data")}


def _cfg(world, out, data, *overrides):
    return load(TrainConfig, None, [f"model.path={world['model']}", f"data.train={data}", f"output_dir={out}",
                                    "progress=false", "lora.r=4", "lr=5e-3", "warmup_ratio=0", "batch_size=4",
                                    *overrides])


def _variant(world, name, edit):
    """A copy of the toy pair file, beside it (same media root), with `edit(rows)` applied."""
    rows = [json.loads(line) for line in world["pairs"].read_text().splitlines()]
    rows = edit(rows)
    path = world["pairs"].parent / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_repeated_id_fails_before_step_1_or_is_skipped_and_the_reference_stays_exact(world, tmp_path):
    def repeat(rows):  # pair 0's id on a pair with the answers swapped: its cached reference would be wrong
        twin = {**rows[0], "chosen": rows[0]["rejected"], "rejected": rows[0]["chosen"]}
        return rows[:3] + [twin] + rows[3:4]

    path = _variant(world, "repeated.jsonl", repeat)
    with pytest.raises(RecordError, match=r"repeated.jsonl:4: field 'id': .* already the id of .*repeated.jsonl:1;"):
        train(_cfg(world, tmp_path / "e", path, "max_steps=1", "precompute_reference=true"))
    assert not (tmp_path / "e" / "metrics.jsonl").exists()  # failed before the first step
    train(_cfg(world, tmp_path / "s", path, "max_steps=1", "precompute_reference=true", "data.on_bad_record=skip"))
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["skipped_records"] == 1
    # a fresh LoRA equals its reference, so the first DPO loss is ln 2 (the user saw 0.69768 with repeated ids)
    assert read_metrics(tmp_path / "s")[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_nan_weight_and_text_delta_are_caught_on_read_not_mid_run(world, tmp_path):
    def bad(rows):
        rows[2]["weight"] = float("nan")
        rows[5]["scores"] = {"delta": "big"}
        return rows

    path = _variant(world, "bad_numbers.jsonl", bad)
    with pytest.raises(RecordError, match=r"bad_numbers.jsonl:3: field 'weight': expected a finite number >= 0"):
        train(_cfg(world, tmp_path / "e", path, "max_steps=1"))
    train(_cfg(world, tmp_path / "s", path, "max_steps=4", "data.on_bad_record=skip",
               "loss=[{name: dadpo, params: {beta: 0.1}}]"))
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["skipped_records"] == 2 and summary["nonfinite_steps"] == 0 and summary["steps"] == 4


def test_dataloader_workers_read_the_lazy_records(world, tmp_path):
    train(_cfg(world, tmp_path / "w0", world["pairs"], "max_steps=3", "lr=1e-12"))
    train(_cfg(world, tmp_path / "w2", world["pairs"], "max_steps=3", "lr=1e-12", "data.num_workers=2"))
    losses = [[row["loss"] for row in read_metrics(tmp_path / run)] for run in ("w0", "w2")]
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_a_file_mixing_images_and_videos_is_refused_before_step_1_unless_batches_hold_one_record(tmp_path):
    """A shuffled mix of media types met a mixed batch at a random step (hours in, naming no record)."""
    import shutil

    from helpers import tiny_model
    from videos import make_frames, write_clip

    from mmpo.config import TrainConfig, load
    from mmpo.records import PairRecord, write_jsonl

    pairs = toy_pairs(tmp_path / "data", n=4)
    write_clip(tmp_path / "data" / "clip.mp4", make_frames(T=4, H=64, W=64))
    video = PairRecord(id="v", media=("clip.mp4",), media_type="video", prompt="what moves ?", chosen="a square",
                       rejected="a circle")
    write_jsonl(pairs, [video], append=True)
    model = tiny_model("llava_next_video", tmp_path)
    base = [f"model.path={model}", f"data.train={pairs}", "progress=false", "lora.r=4", "max_steps=1"]
    with pytest.raises(ValueError, match=r"mixes media types \(images from .*pairs.jsonl:1, videos from "
                                         r".*pairs.jsonl:5\)"):
        train(load(TrainConfig, None, [*base, f"output_dir={tmp_path / 'a'}", "batch_size=2"]))
    train(load(TrainConfig, None, [*base, f"output_dir={tmp_path / 'b'}", "batch_size=1", "model.num_frames=4"]))
    shutil.rmtree(tmp_path / "b")
