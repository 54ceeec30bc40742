"""DDP and FSDP2 with 2 CPU processes (gloo), launched the way README's "Scale" section shows.

Under FSDP2 each rank holds half of every parameter, gradient and optimizer state; under DDP each holds all of
them. Either way, the LoRA and full-parameter runs must log the same losses as one process with the same global
batch, save the same adapter (loadable with peft) or model, and resume after a kill to exactly the
uninterrupted run (per-rank RNG included: the resume runs use LoRA dropout).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_model, toy_pairs
from safetensors.torch import load_file

from mmpo.app.cli import main
from mmpo.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
          str(REPO / "configs/accelerate/fsdp.yaml"), "--num_processes", "2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    return {"model": tiny_model("llava", root), "pairs": toy_pairs(root / "data"), "root": root}


def _args(world, out, *overrides):
    return ["--config", str(REPO / "configs/train/tiny_cpu.yaml"), f"model.path={world['model']}",
            f"data.train={world['pairs']}", f"output_dir={out}", "max_steps=4", *overrides]


def _launch(world, out, *overrides, script=("-m", "mmpo", "train"), env=None, check=True, parallel="fsdp"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    launch = [*LAUNCH[:3], str(REPO / f"configs/accelerate/{parallel}.yaml"), *LAUNCH[4:]]
    cmd = [*launch, *script, *_args(world, out, "batch_size=2", *overrides)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / max(a[k].norm(), 1e-12)) for k in a)


def _same_rows(one, two, keys=("loss", "grad_norm", "rewards/margins")):
    one, two = [r for r in one if "loss" in r], [r for r in two if "loss" in r]  # training rows, each step once
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, len(one) + 1))
    for x, y in zip(one, two, strict=True):
        for k in keys:
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), (x["step"], k)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_lora_on_two_processes_equals_one_process_and_saves_a_peft_adapter(world, tmp_path, parallel):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    assert main(["train", *_args(world, tmp_path / "one", "batch_size=4")]) == 0
    _launch(world, tmp_path / "two", "gradient_checkpointing=true", parallel=parallel)  # activation checkpointing too
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["parallel"] == parallel
    _same_rows(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"))
    one, two = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
    assert _relative_difference(one, two) < 1e-4
    assert any(v.abs().sum() > 0 for k, v in two.items() if "lora_B" in k)  # it trained
    PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(world["model"]), tmp_path / "two" / "adapter")


@pytest.mark.slow
def test_fsdp_full_parameter_equals_one_process(world, tmp_path):
    full = ("lora.enabled=false", "precompute_reference=true", "lr=1e-4")
    assert main(["train", *_args(world, tmp_path / "one", "batch_size=4", *full)]) == 0
    _launch(world, tmp_path / "two", *full)
    _same_rows(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"))
    one, two = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("one", "two"))
    base = load_file(Path(world["model"]) / "model.safetensors")
    changed = [k for k in two if "language_model" in k and not torch.equal(two[k], base[k])]
    assert changed and _relative_difference(one, two) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_resume_after_a_kill_equals_the_uninterrupted_run(world, tmp_path, parallel):
    run = ("max_steps=6", "save_every=2", "lora.dropout=0.3")  # dropout: each rank's RNG must resume too
    _launch(world, tmp_path / "whole", *run, parallel=parallel)
    killed = _launch(world, tmp_path / "broken", *run, script=(str(REPO / "tests" / "crash_train.py"),),
                     env={"CRASH_AT": "5"}, check=False, parallel=parallel)
    assert killed.returncode != 0 and (tmp_path / "broken" / "checkpoints" / "step-4" / "rank1.pt").is_file()
    _launch(world, tmp_path / "broken", *run, parallel=parallel)  # the documented command again: resumes at 4
    _same_rows(read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "broken"))
    whole, broken = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("whole", "broken"))
    assert _relative_difference(whole, broken) < 1e-6


def _sft(world):
    from helpers import toy_sft

    return toy_sft(world["root"] / "data")


@pytest.mark.slow
@pytest.mark.parametrize("accelerate_config", ["ddp", "fsdp"])
def test_schedules_run_under_two_processes(world, tmp_path, accelerate_config):
    """Multi-round DPO (merge, fresh LoRA, on-policy pairs, rebirth) and distillation (mimic KL, then DPO with
    the teacher as reference) under 2 processes, replicated and sharded; distillation (no sampling) logs the
    same losses as one process with the same global batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launch = [*LAUNCH[:3], str(REPO / f"configs/accelerate/{accelerate_config}.yaml"), *LAUNCH[4:], "-m", "mmpo", "train"]
    sft, pairs = _sft(world), world["pairs"]
    runs = {
        "multi_round": ["--config", str(REPO / "configs/train/multi_round_tiny_cpu.yaml"), f"model.path={world['model']}",
                        f"data.train={sft}", "batch_size=2"],
        "distill": ["--config", str(REPO / "configs/train/distill_tiny_cpu.yaml"), f"model.path={world['model']}",
                    f"distill.teacher.path={tiny_model('llava', world['root'], seed=1)}", f"data.train={sft}",
                    f"distill.preference_data={pairs}", "batch_size=2"],
    }
    for name, args in runs.items():
        proc = subprocess.run([*launch, *args, f"output_dir={tmp_path / name}"], env=env, capture_output=True,
                              text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("round-1", "round-2", "rebirth"):
        summary = json.loads((tmp_path / "multi_round" / stage / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["parallel"] == accelerate_config
    assert (tmp_path / "multi_round" / "model" / "config.json").is_file()
    for stage in ("mimic", "preference"):
        rows = [r for r in read_metrics(tmp_path / "distill" / stage) if "loss" in r]
        assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (tmp_path / "distill" / "preference" / "adapter" / "adapter_model.safetensors").is_file()
    one = [*runs["distill"][:-1], "batch_size=4", f"output_dir={tmp_path / 'distill-one'}"]
    assert main(["train", *one]) == 0
    for stage in ("mimic", "preference"):
        _same_rows(read_metrics(tmp_path / "distill-one" / stage), read_metrics(tmp_path / "distill" / stage),
                   keys=("loss", "grad_norm"))
    assert read_metrics(tmp_path / "distill" / "mimic")[0]["mimic/kl"] > 0  # a teacher unlike the student
