"""Experiment trackers (`report_to`, mmpo/metrics.py) read back against metrics.jsonl, and model cards
(mmpo/model_card.py) parsed by huggingface_hub: base model, data (manifest counts, skips), results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import tiny_model, toy_pairs

from mmpo.config import ConfigError, TrainConfig, load
from mmpo.metrics import read_metrics
from mmpo.records import write_manifest
from mmpo.trainer import train


def wandb_history(path: Path) -> list[dict]:
    """The history rows of an offline wandb run file (`run-*.wandb`: a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, rows = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(pending)
            pending = b""
            if rec.HasField("history"):
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def _jsonl_points(run: Path) -> list[tuple]:
    return [(row["step"], k, v) for row in read_metrics(run) for k, v in row.items() if k != "step"]


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """3 DPO steps with report_to [tensorboard, wandb, mlflow] (offline / file store), an eval hook at step 2,
    on pairs whose manifest records counts and a skipped input."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3: the file store needs the opt-in
    pairs = toy_pairs(tmp_path / "data")
    write_manifest(pairs.parent, {"inputs": 17, "pairs": 16}, {"builder": "toy"}, 3,
                   [{"id": "x", "reason": "no_answer"}], datasets=["lmms-lab/POPE"])
    cfg = load(TrainConfig, None, [f"model.path={tiny_model('llava', tmp_path)}", f"data.train={pairs}",
                                   f"output_dir={tmp_path / 'run'}", "progress=false", "lora.r=4", "batch_size=4",
                                   "max_steps=3", "eval_every=2", "report_to=[tensorboard,wandb,mlflow]",
                                   "tracker_project=mmpo-test"])
    train(cfg, eval_hook=lambda model, processor, step: {"pope/random/f1": 0.5 + step / 100})
    return tmp_path / "run", tmp_path


def test_each_tracker_logs_the_step_metrics_of_metrics_jsonl(trained):
    run, tmp = trained
    points = _jsonl_points(run)
    assert {k for _, k, _ in points} >= {"loss", "rewards/margins", "lr", "eval/pope/random/f1"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tb = [(e.step, k, e.value) for k in acc.Tags()["scalars"] for e in acc.Scalars(k)]
    assert sorted((s, k) for s, k, _ in tb) == sorted((s, k) for s, k, _ in points)
    assert acc.PluginTagToContent("hparams")  # the run's settings, in the same events file
    (only,) = (run / "tensorboard").iterdir()  # one run: no timestamp-named folders beside it
    assert only.name.startswith("events.out.tfevents.")
    assert all(v == pytest.approx(dict(((s, k), x) for s, k, x in tb)[(s, k)], rel=1e-6) for s, k, v in points
               if sum(1 for p in points if p[:2] == (s, k)) == 1)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{tmp / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "mmpo-test"]
    (mlrun,) = client.search_runs([exp.experiment_id])
    ml = [(m.step, key, m.value) for key in mlrun.data.metrics for m in client.get_metric_history(mlrun.info.run_id, key)]
    assert sorted(ml) == sorted(points)  # every point, the same values
    params = mlrun.data.params
    assert params["lora.r"] == "4" and params["data_facts.records"] == "16"
    assert params["data_facts.manifest.skipped"] == "1" and params["report_to"] == '["tensorboard", "wandb", "mlflow"]'

    (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    by_step: dict = {}
    for row in wandb_history(wandb_file):  # wandb merges what is logged at one step; the last value wins
        by_step.setdefault(row["_step"], {}).update({k: v for k, v in row.items() if not k.startswith("_")})
    expected: dict = {}
    for step, k, v in points:
        expected.setdefault(step, {})[k] = v
    assert by_step == expected


def card_tables(text: str) -> dict[str, dict[str, str]]:
    """The model card's result tables as {row: {column: cell}} (rows of every table together)."""
    rows, columns = {}, []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| |"):
            columns = cells[1:]
        elif line.startswith("| ") and columns and not line.startswith("|---"):
            rows[cells[0]] = dict(zip(columns, cells[1:]))
    return rows


def test_the_saved_adapter_has_a_model_card_naming_base_model_data_and_results(trained):
    from huggingface_hub import ModelCard

    run, tmp = trained
    card = ModelCard.load(run / "adapter" / "README.md")
    assert card.data.base_model == str(tiny_model("llava", tmp)) and card.data.library_name == "peft"
    assert card.data.datasets == ["lmms-lab/POPE"] and {"mmpo", "dpo", "lora"} <= set(card.data.tags)
    assert "arXiv 2305.18290" in card.text  # the DPO term's paper
    assert "16 records read" in card.text and '{"inputs": 17, "pairs": 16}' in card.text
    assert '1 inputs skipped ({"no_answer": 1})' in card.text
    assert card_tables(card.text)["pope/random"]["f1"] == "0.5200"  # the eval_every result at step 2
    assert "PeftModel.from_pretrained" in card.text


def test_mmpo_eval_on_the_adapter_appends_its_results_to_the_card(trained, monkeypatch, capsys):
    from helpers import COLORS, color_image, color_question
    from huggingface_hub import ModelCard

    from mmpo.eval import cli as eval_cli

    run, tmp = trained
    (tmp / "img").mkdir()
    lines = []
    for i, c in enumerate(COLORS):
        color_image(c, seed=i).save(tmp / "img" / f"{c}.png")
        lines += [{"question_id": 2 * i + j, "image": f"{c}.png", "text": color_question(o),
                   "label": "yes" if o == c else "no"} for j, o in enumerate((c, COLORS[(i + 1) % 4]))]
    (tmp / "q.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp / "pope.yaml").write_text(f"questions: [{tmp / 'q.json'}]\nimage_root: {tmp / 'img'}\nmode: logits\n")
    assert eval_cli.main("pope", ["--config", str(tmp / "pope.yaml"), f"model.path={tiny_model('llava', tmp)}",
                              f"model.adapter={run / 'adapter'}", "model.device=cpu", f"out_dir={tmp / 'ev'}",
                              "report_to=[mlflow]"]) == 0
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    card = ModelCard.load(run / "adapter" / "README.md")
    assert f"### mmpo eval pope ({tmp / 'ev'})" in card.text
    tables = card_tables(card.text)
    top = tables["single split"]  # one question file: metrics.json's aggregation names the row
    assert top["f1"] == f"{metrics['f1']:.4f}" and tables["pope/random"]["f1"] == "0.5200"
    assert top["n"] == "8" and "tp" not in top  # counts stay in metrics.json
    assert f"Fractions, not percent (mode logits, parser official). Every number: `{tmp / 'ev'}/metrics.json`." \
        in card.text

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{tmp / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "mmpo"]
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert mlrun.data.metrics["pope/f1"] == pytest.approx(metrics["f1"])

    # The same evaluation again: the card it wrote does not make the adapter look like other weights (it once
    # refused: "existing predictions were made with other settings"), and its section is replaced, not repeated.
    assert eval_cli.main("pope", ["--config", str(tmp / "pope.yaml"), f"model.path={tiny_model('llava', tmp)}",
                                  f"model.adapter={run / 'adapter'}", "model.device=cpu", f"out_dir={tmp / 'ev'}",
                                  "report_to=[mlflow]"]) == 0
    assert ModelCard.load(run / "adapter" / "README.md").text.count(f"### mmpo eval pope ({tmp / 'ev'})") == 1

    # The adapter on another base (a config's model.path overridden, its model.adapter kept): said when loaded, and
    # its numbers stay off this adapter's card
    other = tiny_model("llava", tmp, seed=1)
    capsys.readouterr()
    assert eval_cli.main("pope", ["--config", str(tmp / "pope.yaml"), f"model.path={other}",
                                  f"model.adapter={run / 'adapter'}", "model.device=cpu", f"out_dir={tmp / 'ev2'}"]) == 0
    assert f"not added to the model card of {run / 'adapter'}: it was trained on" in capsys.readouterr().out
    assert f"({tmp / 'ev2'})" not in ModelCard.load(run / "adapter" / "README.md").text


def test_the_old_tensorboard_key_means_report_to_tensorboard_and_unknown_trackers_are_refused():
    assert load(TrainConfig, None, ["tensorboard=true"]).report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown tracker"):
        load(TrainConfig, None, ["report_to=[tensorbord]"])


def test_a_card_calls_results_fractions_only_when_they_are():
    from mmpo.model_card import eval_table

    assert "Fractions, not percent. Every number" in eval_table("POPE", {"f1": 0.8, "n": 9}, "m.json")
    amber = eval_table("AMBER", {"CHAIR": 7.8, "Cover": 51.2, "Accuracy": 85.3, "n": 9}, "m.json")  # percent, as AMBER
    assert "Fractions" not in amber and "As the benchmark's own scorer gives them. Every number" in amber


def test_every_benchmark_run_takes_report_to():
    """README: eval configs take report_to; HallusionBench's refused it as an unknown key."""
    from mmpo.eval import EVALUATORS

    for name, evaluator in EVALUATORS.items():
        if evaluator.config is not None:
            assert load(evaluator.config, None, ["report_to=[tensorboard]"]).report_to == ["tensorboard"], name


def test_a_tracker_whose_package_is_missing_is_an_error_naming_the_extra(tmp_path):
    from mmpo.metrics import MetricLogger

    missing = [n for n in ("trackio", "swanlab") if importlib.util.find_spec(n) is None]
    if not missing:
        pytest.skip("trackio and swanlab are both installed")
    with pytest.raises(ConfigError, match=rf"pip install 'mmpo\[{missing[0]}\]'"):
        MetricLogger(tmp_path, [missing[0]])
    cfg = load(TrainConfig, None, [f"output_dir={tmp_path / 'run'}", f"report_to=[{missing[0]}]"])
    with pytest.raises(ConfigError, match=rf"report_to: {missing[0]} needs the '{missing[0]}' package"):
        train(cfg)  # before the model or the data are read (neither is set here)


@pytest.mark.slow
def test_under_two_processes_only_the_main_one_reports(tmp_path, monkeypatch):
    """DDP with 2 gloo processes: one MLflow run (the main process's), holding the points of metrics.jsonl."""
    import os
    import subprocess
    import sys

    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    pairs = toy_pairs(tmp_path / "data")
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mmpo", "train",
           f"model.path={tiny_model('llava', tmp_path)}", f"data.train={pairs}", f"output_dir={tmp_path / 'run'}",
           "progress=false", "lora.r=4", "batch_size=2", "max_steps=2", "report_to=[tensorboard,mlflow]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MLFLOW_ALLOW_FILE_STORE": "true",
           "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "mmpo"]
    (mlrun,) = client.search_runs([exp.experiment_id])
    ml = [(m.step, key, m.value) for key in mlrun.data.metrics for m in client.get_metric_history(mlrun.info.run_id, key)]
    assert sorted(ml) == sorted(_jsonl_points(tmp_path / "run"))
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1
