"""Issue 24 (training side): what a run says when data, interruption, locks, disks or configs go wrong.

Each test runs the real command or call and checks the message a user reads, the counted skip, and that
nothing already done is lost.
"""

from pathlib import Path

import pytest
from helpers import tiny_model, toy_pairs, toy_sft

from mmpo.config import TrainConfig, load

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("loud")
    return {"root": root, "model": tiny_model("llava", root), "pairs": toy_pairs(root / "data", n=10)}


def _cfg(world, out, *overrides):
    return load(TrainConfig, None, [f"model.path={world['model']}", f"data.train={world['pairs']}",
                                    f"output_dir={out}", "progress=false", "lora.r=4", "lr=5e-3",
                                    "warmup_ratio=0", "batch_size=4", *overrides])


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
    from mmpo.app.cli import main

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
    from mmpo.app.cli import main

    data = toy_sft(tmp_path / "data", n=2)
    for png in (tmp_path / "data" / "img").glob("*.png"):
        png.write_bytes(b"broken")
    assert main(["build", "augment", "--config", str(CONFIGS.parent / "build" / "augment_image.yaml"),
                 f"in_sft={data}", f"out_dir={tmp_path / 'data' / 'aug'}", "progress=false"]) == 1
    out, err = capsys.readouterr()
    assert "augment: 0 pairs from 2 inputs; 2 skipped (first: img/s0.png" in out
    assert "all 2 inputs were skipped" in err


def _signal_at(step_no: int, signum):
    """An eval hook that sends this process a real signal at `step_no` (as Ctrl-C or a scheduler would)."""
    import os

    def hook(model, processor, step):
        if step == step_no:
            os.kill(os.getpid(), signum)
        return {}
    return hook


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_the_rerun_resumes_exactly(world, tmp_path, signame):
    """save_every=0 (the default): the interrupt alone keeps the work; the rerun equals an uninterrupted run."""
    import signal

    import torch
    from safetensors.torch import load_file

    from mmpo.checkpoint import latest_checkpoint
    from mmpo.metrics import read_metrics
    from mmpo.trainer import Interrupted, train

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN in a background job
    train(_cfg(world, tmp_path / "whole", "max_steps=5", "lora.dropout=0.3"))
    broken = _cfg(world, tmp_path / "broken", "max_steps=5", "lora.dropout=0.3", "eval_every=1")
    with pytest.raises(Interrupted, match="stopped at step 3 of 5; checkpoint saved to .*step-3: rerun the same "
                                          "command to resume"):
        train(broken, eval_hook=_signal_at(3, getattr(signal, signame)))
    assert latest_checkpoint(tmp_path / "broken").name == "step-3"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers given back
    train(_cfg(world, tmp_path / "broken", "max_steps=5", "lora.dropout=0.3"))
    assert [r["step"] for r in read_metrics(tmp_path / "broken")] == [1, 2, 3, 4, 5]
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_save_total_limit_keeps_the_newest_checkpoints(world, tmp_path):
    from mmpo.trainer import train

    train(_cfg(world, tmp_path / "run", "max_steps=6", "save_every=1", "save_total_limit=2"))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-4", "step-5"]


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(world, tmp_path):
    """The kernel's own ENOSPC: the step-4 checkpoint's state.pt is /dev/full (the only full disk a test can
    have without mounting one); the run stops naming it, and step-2's checkpoint still resumes."""
    import os

    from mmpo.checkpoint import CheckpointWriteError, latest_checkpoint
    from mmpo.trainer import train

    if not os.path.exists("/dev/full"):
        pytest.fail("this test needs /dev/full (Linux)")
    run = tmp_path / "run"
    full = tmp_path / "full_disk"
    full.mkdir()
    (full / "state.pt").symlink_to("/dev/full")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".tmp-step-4").symlink_to(full)
    with pytest.raises(CheckpointWriteError, match=r"step-4: checkpoint not saved: no space left on device.*"
                                                   r"previous checkpoint .*step-2 is intact"):
        train(_cfg(world, run, "max_steps=6", "save_every=2"))
    assert latest_checkpoint(run).name == "step-2"
    (run / "checkpoints" / ".tmp-step-4").unlink(missing_ok=True)
    train(_cfg(world, run, "max_steps=6", "save_every=2"))  # resumes from step 2 and finishes
    assert (run / "summary.json").is_file()


def test_an_epoch_remainder_is_said_and_summary_has_final_loss_and_time(world, tmp_path, caplog):
    import json
    import logging

    from mmpo.trainer import train

    with caplog.at_level(logging.INFO, logger="mmpo"):
        train(_cfg(world, tmp_path / "run", "epochs=1", "max_steps=0"))
    assert "10 records at 4 per step: 2 steps per epoch use 8; 2 sit out each epoch" in caplog.text
    assert "train[dpo] step 2/2 (100%): loss 0." in caplog.text  # progress=false still prints the loss
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_loss"] > 0 and summary["train_s"] > 0


def test_ctrl_c_on_mmpo_train_keeps_a_checkpoint_and_says_rerun_resumes(world, tmp_path):
    """The command a user runs, Ctrl-C'd (SIGINT) in the middle, with the default save_every=0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmpo", "train", "--config", str(CONFIGS / "tiny_cpu.yaml"),
           f"model.path={world['model']}", f"data.train={world['pairs']}", f"output_dir={out}", "max_steps=200",
           "batch_size=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 12:  # a loss line every 10 steps
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT received: saving a checkpoint after this step" in err
    assert "mmpo: interrupted: stopped at step" in err and "rerun the same command to resume" in err
    assert (out / "checkpoints" / "latest").is_file()
    # piped output: no progress-bar redraws, no transformers loading bar; loss lines instead
    assert "\r" not in err and "Loading weights" not in err
    assert "train[dpo] step " in err and ": loss 0." in err


def test_validate_reports_every_error_train_would_raise(tmp_path, capsys):
    """`model.dtype: bf16` was ok for validate and refused by train; now both refuse it, with every other error."""
    from mmpo.app.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dtype: bf16\n  device: gpu\nlr: -1\nbatch_size: 0\noptimizer: sgd\nnot_a_key: 1\n")
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    for expected in ["model.dtype: expected float32 | bfloat16 | float16, got 'bf16'",
                     "model.device: expected auto | cpu | cuda | cuda:N | mps, got 'gpu'",
                     "lr: expected >0, got -1", "batch_size: expected >=1, got 0",
                     "optimizer: expected adamw | adamw_8bit, got 'sgd'", "unknown key(s) ['not_a_key']"]:
        assert f"mmpo: error: {bad}: {expected}" in err, (expected, err)
    assert main(["train", "--config", str(bad)]) == 1  # train refuses with the same lines, before any load
    assert "model.dtype: expected float32 | bfloat16 | float16, got 'bf16'" in capsys.readouterr().err


def test_command_line_mistakes_are_the_command_lines(tmp_path, capsys):
    from mmpo.app.cli import main
    from mmpo.config import ConfigError, load

    with pytest.raises(ConfigError, match=r"^command line 'lr=abc': lr: expected a number, got 'abc'$"):
        load(TrainConfig, CONFIGS / "tiny_cpu.yaml", ["lr=abc"])
    assert main(["train", "--config", str(CONFIGS / "tiny_cpu.yaml"), "lr=abc"]) == 1
    assert "mmpo: error: command line 'lr=abc': lr: expected a number" in capsys.readouterr().err
    # the hint's example is itself accepted
    with pytest.raises(ConfigError, match=r"expected key=value \(e\.g\. lr=1e-5\)"):
        load(TrainConfig, None, ["lr"])
    load(TrainConfig, None, ["lr=1e-5"])
    from mmpo.eval.pope_runner import PopeEvalConfig

    with pytest.raises(ConfigError, match=r"e\.g\. (\w+)=VALUE"):
        load(PopeEvalConfig, None, ["oops"])
    # a single value for a list key is a one-item list
    from mmpo.builders.self_qa import SelfQAConfig

    assert load(SelfQAConfig, None, ["question_kinds=what"]).question_kinds == ["what"]
    assert load(SelfQAConfig, None, ["temperatures=0.5"]).temperatures == [0.5]
    assert load(PopeEvalConfig, None, ["questions=data/my file.json"]).questions == ["data/my file.json"]


def test_yaml_alias_bombs_are_refused_at_once(tmp_path, capsys):
    """D10: nine levels of ten aliases each stand for 10^9 items under loss.params."""
    import time

    from mmpo.app.cli import main

    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    bomb = tmp_path / "dpo_bomb.yaml"
    bomb.write_text("loss:\n  - name: dpo\n    params:\n" + "".join(f"      {x}\n" for x in levels))
    started = time.perf_counter()
    assert main(["validate", str(bomb)]) == 1
    assert main(["train", "--config", str(bomb)]) == 1
    build = tmp_path / "build"
    build.mkdir()
    aug = build / "augment_bomb.yaml"
    aug.write_text("op_params:\n" + "".join(f"  {x}\n" for x in levels))
    assert main(["build", "augment", "--config", str(aug)]) == 1
    assert time.perf_counter() - started < 30
    err = capsys.readouterr().err
    assert err.count("values through its aliases") == 3 and str(bomb) in err and str(aug) in err
    recursive = tmp_path / "loop.yaml"
    recursive.write_text("loss: &x\n  - name: dpo\n    params: {a: *x}\n")
    assert main(["validate", str(recursive)]) == 1
    assert "refers to its own anchor" in capsys.readouterr().err


def _wait_for(path: Path, proc, rows: int = 1, timeout: float = 120) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) >= rows:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} never got {rows} rows (exit {proc.poll()}): {proc.stderr.read() if proc.stderr else ''}")


def test_a_second_run_on_a_busy_folder_is_refused_naming_the_holder(world, tmp_path, capsys):
    """D3: `mmpo train` twice on one output_dir, and `mmpo build augment` twice on one out_dir."""
    import os
    import signal
    import subprocess
    import sys

    from mmpo.app.cli import main

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "mmpo", "train", "--config", str(CONFIGS / "tiny_cpu.yaml"),
                              f"model.path={world['model']}", f"data.train={world['pairs']}", f"output_dir={run}",
                              "max_steps=2000", "batch_size=2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        _wait_for(run / "metrics.jsonl", first)
        assert main(["train", "--config", str(CONFIGS / "tiny_cpu.yaml"), f"model.path={world['model']}",
                     f"data.train={world['pairs']}", f"output_dir={run}", "max_steps=2000", "batch_size=2",
                     "lr=1e-3"]) == 1
        err = capsys.readouterr().err
        assert f"{run} is in use by another mmpo process (pid {first.pid} on " in err and "mmpo train" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130 and (run / "checkpoints" / "latest").is_file()  # the first run kept its work

    data = toy_sft(tmp_path / "data", n=2)
    out = tmp_path / "data" / "aug"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from mmpo.folder_lock import acquire; "
                               "acquire(sys.argv[1]); print('held', flush=True); sys.stdin.read()", str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["build", "augment", "--config", str(CONFIGS.parent / "build" / "augment_image.yaml"),
                f"in_sft={data}", f"out_dir={out}", "progress=false"]
        assert main(args) == 1
        assert f"{out} is in use by another mmpo process (pid {holder.pid}" in capsys.readouterr().err
        assert not (out / "pairs.jsonl").exists()
    finally:
        holder.communicate("", timeout=60)
    assert main(args) == 0  # the holder is gone: the folder is free (flock ends with its process)


def _augment_args(data, out, *more):
    return ["build", "augment", "--config", str(CONFIGS.parent / "build" / "augment_video.yaml"), f"in_sft={data}",
            f"out_dir={out}", "progress=false", "num_candidates=1", *more]


def test_a_shard_count_the_input_cannot_fill_is_refused_at_once(tmp_path, capsys):
    """D1: shard=0/1000000000 was accepted and its merge ran for minutes, growing memory."""
    import time

    from mmpo.app.cli import main

    data = toy_sft(tmp_path / "data", n=3)
    started = time.perf_counter()
    assert main(_augment_args(data, tmp_path / "out", "shard=0/1000000000")) == 1
    assert "asks for more than 100,000 shards" in capsys.readouterr().err
    assert main(_augment_args(data, tmp_path / "out", "shard=0/4")) == 1
    assert "has 3 items in 3 block(s) of 1: use at most 3 shards" in capsys.readouterr().err
    # shard folders made by hand for a billion shards: the merge refuses before laying them out
    (tmp_path / "out" / "shards" / "0-of-1000000000").mkdir(parents=True)
    assert main(_augment_args(data, tmp_path / "out", "merge=true")) == 1
    assert "holds shards of 1,000,000,000 processes, but the input fills at most 3" in capsys.readouterr().err
    assert time.perf_counter() - started < 30


def test_an_input_edited_between_shards_is_refused_by_the_merge(tmp_path, capsys):
    """D2: same id, new answer after shard 0 ran: the merge kept the old answer; now it names the shard."""
    import json

    from mmpo.app.cli import main

    data = toy_sft(tmp_path / "data", n=4)
    out = tmp_path / "data" / "out"
    args = ["build", "augment", "--config", str(CONFIGS.parent / "build" / "augment_image.yaml"), f"in_sft={data}",
            f"out_dir={out}", "progress=false"]
    assert main([*args, "shard=0/2"]) == 0
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    rows[0]["answer"] = "a new answer"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([*args, "shard=1/2"]) == 0
    capsys.readouterr()
    assert main([*args, "merge=true"]) == 1
    err = capsys.readouterr().err
    assert "shard 0/2 was built from another version of" in err and "fresh=true" in err
    assert not (out / "pairs.jsonl").exists()
    assert main([*args, "shard=0/2"]) == 1  # resuming shard 0 on the new bytes is refused too
    assert "was started from another version" in capsys.readouterr().err
    assert main([*args, "shard=0/2", "fresh=true"]) == 0 and main([*args, "merge=true"]) == 0
    assert "a new answer" in (out / "pairs.jsonl").read_text()


def test_make_model_clip_writes_a_checkpoint_the_builders_load(tmp_path, capsys):
    from mmpo.app.cli import main
    from mmpo.clip import load_clip

    assert main(["make-model", "--family", "clip", "--out", str(tmp_path / "clip")]) == 0
    assert "tiny random open_clip checkpoint" in capsys.readouterr().out
    scorer = load_clip(tmp_path / "clip")
    assert scorer.encode_texts(["a red square"]).shape[0] == 1


def test_piped_builders_print_progress_lines_not_bars(tmp_path, capsys):
    from mmpo.app.cli import main

    data = toy_sft(tmp_path / "data", n=3)
    assert main(["build", "augment", "--config", str(CONFIGS.parent / "build" / "augment_image.yaml"),
                 f"in_sft={data}", f"out_dir={tmp_path / 'data' / 'aug'}"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "augment: 3/3 items (100%)" in err
    assert "augment: 3 pairs from 3 inputs" in out


def test_demo_plots_show_zero_bars_a_full_axis_and_every_runs_curve(tmp_path):
    """Plots that say what the tables say: labelled values (a 0 shows as 0.00), F1 from 0, smoothed curves, one panel
    per run, video runs too, each titled with its model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmpo.demo import report

    splits = {s: {"f1": 0.0, "yes_ratio": 0.0} for s in ("random", "popular", "adversarial")}
    axes_seen = []
    original = plt.subplots

    def spy(*args, **kwargs):
        fig, ax = original(*args, **kwargs)
        axes_seen.append(ax)
        return fig, ax
    plt.subplots = spy
    try:
        report.plot_pope(tmp_path / "pope.png", splits, {"DPO": [splits]}, plt)
        rows = [{"step": i, "loss": 0.7 - 0.01 * i + (0.05 if i % 2 else -0.05)} for i in range(1, 21)]
        report.plot_curves(tmp_path / "curves.png", {"DPO": rows, "DA-DPO": rows}, plt, {"PaMi-VDPO": rows})
    finally:
        plt.subplots = original
    pope_ax = axes_seen[0]
    assert pope_ax.get_ylim()[0] == 0
    assert [t.get_text() for t in pope_ax.texts].count("0.00") == 6  # every zero bar says so
    panels = [ax for ax in axes_seen[1].flat if ax.axison]
    assert [ax.get_title() for ax in panels] == ["DPO (tiny LLaVA)", "DA-DPO (tiny LLaVA)",
                                                 "PaMi-VDPO (tiny LLaVA-NeXT-Video)"]
    raw, smooth = panels[0].lines[0].get_ydata(), panels[0].lines[1].get_ydata()
    variation = lambda ys: sum(abs(ys[i] - ys[i - 1]) for i in range(1, len(ys)))  # noqa: E731
    assert abs(smooth[0] - raw[0]) < 1e-9 and variation(smooth) < 0.3 * variation(raw)
    assert (tmp_path / "pope.png").stat().st_size > 0 and (tmp_path / "curves.png").stat().st_size > 0
    text = "# r\n\nprose line\n\n| model | a |\n|---|---|\n| SFT | 1 |\n\nBest method on the adversarial split: **X**\n"
    assert report.summary_lines(text) == ["| model | a |", "|---|---|", "| SFT | 1 |",
                                          "Best method on the adversarial split: **X**"]


@pytest.mark.slow
def test_two_process_fsdp_prints_each_event_once_and_resumes_after_sigterm(world, tmp_path):
    """Item 4 and the SIGTERM a scheduler sends: `accelerate launch` (FSDP2, 2 CPU processes, gloo) of 20 steps,
    SIGTERM in the middle, then the same command again. Each event prints once; torch's FSDP2 view-tensor warning
    is explained once instead of printed every step by every process."""
    import os
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(repo / "configs/accelerate/fsdp.yaml"), "--num_processes", "2", "-m", "mmpo", "train", "--config",
           str(CONFIGS / "tiny_cpu.yaml"), f"model.path={world['model']}", f"data.train={world['pairs']}",
           f"output_dir={out}", "max_steps=20", "batch_size=2", "gradient_checkpointing=true",
           "shared_prefix=false"]  # this path's forwards return views: torch warns on each one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo)}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    _wait_for(out / "metrics.jsonl", first, rows=4, timeout=240)
    os.killpg(first.pid, signal.SIGTERM)  # what a scheduler does to the job: every process gets it
    _, err1 = first.communicate(timeout=240)
    assert (out / "checkpoints" / "latest").is_file(), err1[-3000:]
    assert err1.count("SIGTERM received: saving a checkpoint") == 1, err1[-3000:]
    assert err1.count("mmpo: interrupted: stopped at step") == 1, err1[-3000:]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    for text in (err1, second.stderr):
        assert "returned a view tensor" not in text  # torch's own line, every step on every process: gone
        assert text.count("FSDP2-wrapped model returns a view tensor") == 1  # explained once instead
        assert "\r" not in text
    assert second.stderr.count("resumed from") == 1 and second.stdout.count("run directory:") == 1
    from mmpo.metrics import read_metrics

    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, 21))
