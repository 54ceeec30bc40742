"""Evaluation on 2 gloo processes (mmpo/eval/sharding.py): the same answer files and metrics as one process, each
rank's share in run.json, and a rerun after one rank was killed answers only what is missing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import COLORS, color_image, color_question, tiny_model
from videos import make_frames, write_clip

from mmpo.eval import sharding

TESTS = Path(__file__).resolve().parent


def test_shares_are_contiguous_and_cover_every_question():
    for n in range(0, 9):
        for world in (1, 2, 3):
            parts = [list(sharding.share(n, r, world)) for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    """A POPE split (16 questions over 4 images) and a VideoHallucer category (3 pairs), with their configs."""
    root = tmp_path_factory.mktemp("sharding")
    (root / "img").mkdir()
    lines = []
    for i, c in enumerate(COLORS):
        color_image(c, seed=i).save(root / "img" / f"{c}.png")
        for j, other in enumerate(COLORS):
            lines.append({"question_id": 4 * i + j + 1, "image": f"{c}.png", "text": color_question(other),
                          "label": "yes" if other == c else "no"})
    (root / "coco_pope_random.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    data = root / "vh" / "object_relation"
    (data / "videos").mkdir(parents=True)
    for i in range(3):
        write_clip(data / "videos" / f"clip{i}.mp4", make_frames(T=4, H=64, W=64, seed=i), fps=4)
    pairs = [{"basic": {"video": f"clip{i}.mp4", "question": "is there a square in the video ?", "answer": "yes"},
              "hallucination": {"video": f"clip{(i + 1) % 3}.mp4", "question": "is there a cat in the video ?",
                                "answer": "no"}, "type": "object"} for i in range(3)]
    (data / "object_relation.json").write_text(json.dumps(pairs, indent=4))
    pope_model, video_model = tiny_model("llava", root), tiny_model("llava_next_video", root)
    (root / "pope.yaml").write_text(
        f"model: {{path: {pope_model}, device: cpu}}\nquestions: [{root / 'coco_pope_random.json'}]\n"
        f"image_root: {root / 'img'}\nmode: generate\nmax_new_tokens: 3\nbatch_size: 2\n")
    (root / "videohallucer.yaml").write_text(
        f"model: {{path: {video_model}, device: cpu, num_frames: 4}}\ndata_dir: {root / 'vh'}\n"
        "categories: [object_relation]\nmode: logits\nbatch_size: 1\n")
    return root


def _eval(root: Path, name: str, out: Path, processes: int, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["eval", name, "--config", str(root / f"{name}.yaml"), f"out_dir={out}"]
    if processes == 1:
        cmd = [sys.executable, "-m", "mmpo", *args]
    else:  # the documented form (`-m mmpo`), or the test's script that kills a rank
        launcher = Path(sys.executable).parent / "accelerate"
        target = [str(TESTS / "eval_ranks.py")] if env else ["-m", "mmpo"]
        cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *target, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300, cwd=TESTS.parent)


def _outputs(out: Path) -> dict[str, bytes]:
    """The answer files and metrics: everything but run.json (how the call ran), the plots, and lmms-eval's results
    file (it records the date); lmms-eval's samples files by their names without the date."""
    return {re.sub(r"\d{8}_\d{6}_", "", str(p.relative_to(out))): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "run.json" and p.suffix != ".png" and not p.name.endswith("_results.json")}


@pytest.mark.slow
@pytest.mark.parametrize("name, answer_file", [("pope", "answers_random.jsonl"),
                                               ("videohallucer", "results/object_relation.json")])
def test_two_processes_write_what_one_does_and_resume_after_a_rank_is_killed(benchmarks, name, answer_file):
    root = benchmarks
    one = _eval(root, name, root / f"{name}-1", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _eval(root, name, root / f"{name}-2", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    expected = _outputs(root / f"{name}-1")
    assert answer_file in expected and "metrics.json" in expected
    two_out = _outputs(root / f"{name}-2")
    # predictions.jsonl, the resumable log, holds the same rows: in question order from N processes, in answering
    # order (logits mode groups a video's questions) from one
    assert sorted(two_out.pop("predictions.jsonl").splitlines()) == sorted(expected["predictions.jsonl"].splitlines())
    assert two_out == {k: v for k, v in expected.items() if k != "predictions.jsonl"}
    run = json.loads((root / f"{name}-2" / "run.json").read_text())
    n_questions = len((root / f"{name}-1" / "predictions.jsonl").read_text().splitlines())
    assert run["world_size"] == 2 and sum(run["shares"]) == n_questions and min(run["shares"]) >= n_questions // 2
    assert json.loads((root / f"{name}-1" / "run.json").read_text())["world_size"] == 1

    # rank 1 dies after its first batch: its answers so far stay in its rank file; the rerun answers the rest
    killed = root / f"{name}-killed"
    dead = _eval(root, name, killed, 2, env={"KILL_RANK": "1", "KILL_AFTER": "1"})
    assert dead.returncode != 0
    assert (killed / "predictions.rank1.jsonl").is_file() and not (killed / "metrics.json").exists()
    kept = len((killed / "predictions.rank1.jsonl").read_text().splitlines())
    again = _eval(root, name, killed, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list(killed.glob("predictions.rank*.jsonl"))
    resumed = _outputs(killed)
    assert sorted(resumed.pop("predictions.jsonl").splitlines()) == sorted(expected.pop("predictions.jsonl").splitlines())
    assert resumed == expected
    assert sum(json.loads((killed / "run.json").read_text())["shares"]) <= n_questions - kept
