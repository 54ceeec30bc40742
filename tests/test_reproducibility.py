"""Same seed, same numbers (README "Reproducibility"): each command run twice in separate processes, with
different PYTHONHASHSEEDs (so set/dict order of strings differs), gives identical bytes: the augment and self-QA
builders' pairs.jsonl, a PaMi-VDPO + DPO video training's metrics.jsonl lines and adapter weights, and a
VideoHallucer evaluation's answers. Processes, not calls: state a process leaves behind cannot carry over."""

import contextlib
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
from helpers import SAMPLES, tiny_model
from videos import make_frames, write_clip

from mmpo.records import SFTRecord, write_jsonl

REPO = Path(__file__).resolve().parents[1]
MEASURED = ("pairs_per_s", "tokens_per_s", "peak_mem_gb")  # speed and memory of the machine, not results


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    (root / "v").mkdir()
    recs = []
    for i in range(4):
        write_clip(root / "v" / f"{i}.mp4", make_frames(T=8, H=64, W=64, seed=i))
        recs.append(SFTRecord(f"v{i}", (f"v/{i}.mp4",), "video", "describe the video .", "a square moves right"))
    write_jsonl(root / "videos.jsonl", recs)
    vh = root / "videohallucer"
    for cat in ("object_relation", "temporal"):  # the reference layout, from the vendored real excerpts
        (vh / cat / "videos").mkdir(parents=True)
        shutil.copy(SAMPLES / f"videohallucer_{cat}_sample.json", vh / cat / f"{cat}.json")
        pairs = json.loads((vh / cat / f"{cat}.json").read_text())
        for i, name in enumerate(sorted({p[s]["video"] for p in pairs for s in ("basic", "hallucination")})):
            write_clip(vh / cat / "videos" / name, make_frames(T=8, H=64, W=64, seed=i))
    return {"root": root, "sft": root / "videos.jsonl", "vh": vh, "model": tiny_model("llava_next_video", root)}


def _twice(*args: str, timeout: float = 300) -> None:
    """`python -m mmpo ARGS` in two processes at once, with different hash seeds; {run} in an arg -> 0 / 1.

    Each command takes seconds here; one still running after `timeout` s fails the test with the Python stack
    of every thread of both processes and their workers (faulthandler, on SIGABRT to the process group)
    instead of stalling the suite."""
    procs = []
    for run in (0, 1):
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   PYTHONHASHSEED=str(run + 1), PYTHONFAULTHANDLER="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "mmpo", *(a.replace("{run}", str(run)) for a in args)], env=env,
                                      cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      start_new_session=True))
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"mmpo {' '.join(args)} still running after {timeout} s; the stacks:\n{_abort(procs)}")
        assert proc.returncode == 0, err[-3000:]


def _abort(procs: list[subprocess.Popen]) -> str:
    """SIGABRT every process of the commands' groups (faulthandler prints their stacks, innermost call first) and
    return what they printed from there on."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGABRT)
    dumps = []
    for proc in procs:
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            err = proc.communicate()[1]
        dumps.append(err[err.find("Fatal Python error"):][:12000])
    return "\n".join(dumps)


def _same_bytes(a: Path, b: Path) -> bytes:
    assert a.read_bytes() == b.read_bytes(), f"{a} != {b}"
    return a.read_bytes()


def test_augment_then_pami_dpo_video_training_repeat_bit_for_bit(world, tmp_path):
    out = tmp_path / "aug{run}"
    _twice("build", "augment", "--config", "configs/build/augment_video.yaml", f"in_sft={world['sft']}",
           f"out_dir={out}", "num_frames=4", "num_workers=2", "progress=false")
    pairs = _same_bytes(tmp_path / "aug0" / "pairs.jsonl", tmp_path / "aug1" / "pairs.jsonl")
    assert pairs.count(b"rejected_bag") == 4

    run = tmp_path / "run{run}"
    _twice("train", f"model.path={world['model']}", f"data.train={tmp_path / 'aug0' / 'pairs.jsonl'}",
           f"output_dir={run}", "progress=false", "lora.r=4", "max_steps=4", "batch_size=2", "model.num_frames=4",
           "lr=5e-3", "deterministic=true", "loss=[{name: pami, params: {delta_min: 0.0}}, {name: dpo}]")
    a, b = tmp_path / "run0", tmp_path / "run1"
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    for row in rows[0] + rows[1]:
        assert all(row.pop(key) > 0 for key in MEASURED)
    assert rows[0] == rows[1] and len(rows[0]) == 4  # every logged number, float for float
    assert rows[0][-1]["pami/tau"] != rows[0][0]["pami/tau"] and rows[0][-1]["grad_norm"] > 0  # PaMi bags at work
    # every file of the adapter but its model card, which names its own run folder (run0 / run1)
    weights = sorted(p.relative_to(a) for p in (a / "adapter").rglob("*") if p.is_file() and p.name != "README.md")
    assert any(str(w).endswith(".safetensors") for w in weights)
    for w in weights:
        _same_bytes(a / w, b / w)
    card = [(d / "adapter" / "README.md").read_text().replace(d.name, "RUN") for d in (a, b)]
    assert card[0] == card[1]  # and the cards agree once the folder name is set aside
    env = json.loads((a / "run.json").read_text())
    assert env["deterministic"] and env["deterministic_algorithms"] and env["torch_threads"] == 1
    assert env["cublas_workspace_config"] and env["torch"] and env["transformers"]


def test_self_qa_builds_repeat_bit_for_bit(world, tmp_path):
    _twice("build", "self_qa", "--config", "configs/build/self_qa_video.yaml", f"in_sft={world['sft']}",
           f"model.path={world['model']}", f"out_dir={tmp_path / 'qa{run}'}", "model.num_frames=4",
           "max_new_tokens=6", "questions_per_item=1", "temperatures=[0.7, 1.3]", "min_gap=0", "judge=yes_no",
           "batch_size=2", "progress=false")
    _same_bytes(tmp_path / "qa0" / "pairs.jsonl", tmp_path / "qa1" / "pairs.jsonl")
    counts = json.loads((tmp_path / "qa0" / "manifest.json").read_text())["counts"]
    assert counts["answers"] == 8  # sampled at temperature > 0: the seeds, not greedy decoding, make it repeat


def test_videohallucer_eval_repeats_bit_for_bit(world, tmp_path):
    _twice("eval", "videohallucer", "--config", "configs/eval/videohallucer.yaml", f"model.path={world['model']}",
           "model.num_frames=4", f"data_dir={world['vh']}", "categories=[object_relation, temporal]",
           f"out_dir={tmp_path / 'vh{run}'}", "max_new_tokens=4")
    for cat in ("object_relation", "temporal"):
        answers = _same_bytes(*(tmp_path / f"vh{r}" / "results" / f"{cat}.json" for r in (0, 1)))
        assert b"predict" in answers


def test_world_videos_encode_to_the_same_bytes_every_time(tmp_path):
    """The demo's divergence (benchmarks/LOG.md 2026-12-06): x264's macroblock-tree rate control gave 2-3
    distinct files in 25 encodes of one clip, and 14 of 400 training videos differed between two demo runs (up to
    8 grey levels once decoded). The clips are ones that differed; the old encoder settings fail this (not every
    time: it is nondeterministic), `mbtree=0` repeats."""
    from mmpo.demo.world import WorldConfig, _scene_seed, render_video, sample_video, write_mp4

    cfg = WorldConfig()
    for i in (7, 16, 44):  # training videos 00007, 00016 and 00044 differed between the two demo runs
        seed = _scene_seed(cfg, "video", i)
        frames, _ = render_video(sample_video(cfg, np.random.default_rng(seed)), cfg, seed)
        first = write_mp4(tmp_path / "a.mp4", frames).read_bytes()
        for _ in range(30):
            assert write_mp4(tmp_path / "b.mp4", frames).read_bytes() == first
