"""Two CPU processes (gloo) through `accelerate launch`: both ranks end with identical parameters."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model, toy_pairs


def _launch(tmp_path, *overrides, env=None, data=None):
    model = tiny_model("llava", tmp_path)
    pairs = data or toy_pairs(tmp_path / "data")
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(Path(__file__).parent / "ddp_train.py"),
           str(tmp_path), f"model.path={model}", f"data.train={pairs}", f"output_dir={tmp_path / 'run'}",
           "progress=false", "lora.r=4", "lr=5e-3", "max_steps=3", "batch_size=2", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["sums"].keys() == ranks[1]["sums"].keys()
    for name, value in ranks[0]["sums"].items():
        assert value == pytest.approx(ranks[1]["sums"][name], abs=1e-6), name
    assert any(abs(v) > 0 for n, v in ranks[0]["sums"].items() if "lora_B" in n)  # it trained
    return json.loads((tmp_path / "run" / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("precompute", ["false", "true"])  # true: rank 0 precomputes, rank 1 waits and reads
def test_two_process_training_keeps_ranks_in_sync(tmp_path, precompute):
    _launch(tmp_path, f"precompute_reference={precompute}")


@pytest.mark.slow
def test_a_nan_on_one_rank_skips_the_step_on_both_without_hanging(tmp_path):
    """Rank 1's second loss is NaN: both ranks skip that update (one collective decision) and stay equal."""
    summary = _launch(tmp_path, "grad_accum=2", env={"POISON_RANK": "1", "POISON_CALL": "2"})
    assert summary["steps"] == 3 and summary["nonfinite_steps"] == 1


@pytest.mark.slow
def test_a_batch_left_empty_on_one_rank_is_skipped_on_both(tmp_path):
    """batch_size 1 and one unreadable image: the rank that draws it has an empty batch; neither rank hangs."""
    from mmpo.records import read_pairs, write_jsonl

    pairs = toy_pairs(tmp_path / "data", n=8)
    (tmp_path / "data" / "img" / "broken.png").write_bytes(b"not a png")
    recs = read_pairs(pairs)
    write_jsonl(pairs, recs[:1] + [dataclasses.replace(recs[1], media=("img/broken.png",))] + recs[2:])
    summary = _launch(tmp_path, "batch_size=1", "max_steps=4", "data.on_bad_record=skip", data=pairs)
    assert summary["steps"] == 4 and summary["skipped_by_reason"].get("bad_media") == 1
