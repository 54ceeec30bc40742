"""Issue 24 (training side): what a run says when data, interruption, locks, disks or configs go wrong.

Each test runs the real command or call and checks the message a user reads, the counted skip, and that
nothing already done is lost.
"""

import shutil
from pathlib import Path

import pytest
from helpers import tiny_model, toy_sft

from mmpo.config import TrainConfig, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("loud")
    return {"root": root, "model": tiny_model("llava", root)}


def _sft_with_corrupt_image(folder: Path, n: int = 4) -> Path:
    """A toy SFT file whose 2nd record's image is truncated (exists, so reading the file does not catch it)."""
    sft = toy_sft(folder, n=n)
    bad = folder / "img" / "s1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    return sft


def _mr_cfg(world, data, out, *overrides):
    return load(TrainConfig, CONFIGS / "multi_round_tiny_cpu.yaml", [
        f"model.path={world['model']}", f"data.train={data}", f"output_dir={out}", "multi_round.num_rounds=1",
        "multi_round.steps_per_round=1", "multi_round.num_samples=2", "multi_round.max_new_tokens=3",
        "multi_round.rebirth=false", "multi_round.save_merged=false", "batch_size=2", *overrides])


def test_multi_round_honours_on_bad_record_skip(world, tmp_path):
    from mmpo.media import MediaError
    from mmpo.multi_round import run_multi_round

    data = _sft_with_corrupt_image(tmp_path / "data")
    with pytest.raises(MediaError, match=r"sft\.jsonl:2: .*s1\.png.*on_bad_record=skip"):
        run_multi_round(_mr_cfg(world, data, tmp_path / "err"))
    out = run_multi_round(_mr_cfg(world, data, tmp_path / "skip", "data.on_bad_record=skip"))
    import json

    manifest = json.loads((out / "round-1" / "manifest.json").read_text())
    assert manifest["counts"]["skipped"] == 1
    assert "sft.jsonl:2" in manifest["skipped"][0]["reason"]
    assert manifest["counts"]["pairs"] >= 1 and (out / "round-1" / "adapter").is_dir()


def test_rebirth_with_only_empty_answers_says_how_to_finish(world, tmp_path):
    from mmpo.multi_round import rebirth_data
    from mmpo.records import read_sft
    from mmpo.schedules import load_merged

    data = toy_sft(tmp_path / "data", n=2)
    for png in (tmp_path / "data" / "img").glob("*.png"):
        png.write_bytes(b"not an image")
    cfg = _mr_cfg(world, data, tmp_path / "run", "data.on_bad_record=skip")
    model, processor = load_merged(cfg.model)
    with pytest.raises(ValueError, match=r"only empty answers.*multi_round\.rebirth=false"):
        rebirth_data(cfg, model, processor, read_sft(data))


def test_a_build_that_writes_no_pair_fails_naming_why(world, tmp_path, capsys):
    """A tiny random model cannot write the rubric judge's scores: every answer is judge_unparsable."""
    from mmpo.cli import main

    data = toy_sft(tmp_path / "data", n=2)
    args = ["build", "self_qa", "--config", str(CONFIGS.parent / "build" / "self_qa_video.yaml"), f"in_sft={data}",
            f"model.path={world['model']}", "model.num_frames=2", "model.dtype=float32", "max_new_tokens=3",
            "judge_max_new_tokens=3", "questions_per_item=1", "temperatures=[0.5, 1.0]", "progress=false"]
    assert main([*args, f"out_dir={tmp_path / 'judged'}"]) == 1
    out, err = capsys.readouterr()
    assert "self_qa: 0 pairs from 2 inputs" in out
    assert "wrote no pair" in err and "judge_unparsable 4 of 4 answers" in err and "judge=yes_no" in err
    # the way out it names works, and the console then says what was written
    assert main([*args, f"out_dir={tmp_path / 'yes_no'}", "judge=yes_no", "min_gap=0"]) == 0
    out = capsys.readouterr().out
    assert "self_qa: " in out and " pairs from 2 inputs" in out and "written to" in out


def test_a_build_whose_inputs_are_all_skipped_fails(tmp_path, capsys):
    from mmpo.cli import main

    data = toy_sft(tmp_path / "data", n=2)
    for png in (tmp_path / "data" / "img").glob("*.png"):
        png.write_bytes(b"broken")
    assert main(["build", "augment", "--config", str(CONFIGS.parent / "build" / "augment_image.yaml"),
                 f"in_sft={data}", f"out_dir={tmp_path / 'data' / 'aug'}", "progress=false"]) == 1
    out, err = capsys.readouterr()
    assert "augment: 0 pairs from 2 inputs; 2 skipped (first: img/s0.png" in out
    assert "all 2 inputs were skipped" in err
