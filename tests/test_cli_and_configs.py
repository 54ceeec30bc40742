"""CLI surface, every shipped YAML, config errors, and the layering rule (core never imports builders/eval)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model, toy_pairs, toy_sft

from mmpo import config as cfgmod
from mmpo.app.cli import COMMANDS, config_class_for, main, parse

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "mmpo", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for name in ("build", "train", "eval", "demo", "validate", "make-model"):
        assert name in out.stdout and name in COMMANDS


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name != "accelerate"], ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """Each YAML loads into its typed schema and starts with the command that runs it."""
    cfgmod.load(config_class_for(path), path)
    assert path.read_text().startswith("# mmpo ")


def test_a_shipped_config_copied_anywhere_validates_by_its_first_line(tmp_path, capsys):
    """A copy of configs/eval/pope_tiny_cpu.yaml outside an eval/ folder was checked as a train config."""
    for path in [p for p in CONFIGS if p.parent.name != "accelerate"]:
        copy = tmp_path / f"my_{path.parent.name}.yaml"
        copy.write_text(path.read_text())
        assert config_class_for(copy) is config_class_for(path), path
    assert main(["validate", str(copy)]) == 0
    copy.write_text("# mmpo eval popee --config x.yaml\nquestions: q.json\n")
    with pytest.raises(ValueError, match=r"cannot tell which benchmark .*`# mmpo eval <benchmark> ...`"):
        config_class_for(copy)


def test_accelerate_configs_name_their_launch_command():
    for path in (REPO / "configs" / "accelerate").glob("*.yaml"):
        assert path.read_text().startswith("# accelerate launch")


def test_config_errors_name_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1.0e-5\nbatch_sise: 4\n")
    with pytest.raises(cfgmod.ConfigError, match=r"bad.yaml: unknown key\(s\) \['batch_sise'\]"):
        cfgmod.load(cfgmod.TrainConfig, bad)
    bad.write_text("lora:\n  r: four\n")
    with pytest.raises(cfgmod.ConfigError, match=r"bad.yaml: lora.r: expected an integer"):
        cfgmod.load(cfgmod.TrainConfig, bad)
    with pytest.raises(cfgmod.ConfigError, match="expected key=value"):
        cfgmod.load(cfgmod.TrainConfig, None, ["lr"])
    assert main(["validate", str(bad)]) == 1  # one clear line, no traceback
    assert "mmpo: error:" in capsys.readouterr().err
    good = REPO / "configs" / "train" / "tiny_cpu.yaml"
    assert main(["validate", str(bad), str(good)]) == 1  # a bad file does not stop the check of the others
    out = capsys.readouterr()
    assert f"ok  {good}" in out.out and "1 of 2 config file(s) failed" in out.err
    with pytest.raises(cfgmod.ConfigError, match=r"command line 'lrr=1': unknown key 'lrr' in the top level"):
        cfgmod.load(cfgmod.TrainConfig, good, ["lrr=1"])
    with pytest.raises(cfgmod.ConfigError, match=r"command line 'lora.rank=4': unknown key 'rank' in lora"):
        cfgmod.load(cfgmod.TrainConfig, good, ["lora.rank=4"])


def test_overrides_parse_in_any_order():
    """`mmpo build NAME --config F k=v` (the order every build YAML's header shows), overrides before --config,
    and the same for train; anything else left over is still an error."""
    for rest in (["--config", "c.yaml", "a=1", "b=2"], ["a=1", "--config", "c.yaml", "b=2"], ["a=1", "b=2"]):
        for command in (["build", "augment"], ["train"]):
            args = parse([*command, *rest])
            assert args.overrides == ["a=1", "b=2"]
            assert args.config == ("c.yaml" if "--config" in rest else None)
    assert parse(["build", "--config", "c.yaml", "augment", "a=1"]).name == "augment"
    with pytest.raises(SystemExit):
        parse(["build", "augment", "--config", "c.yaml", "--bogus"])


def test_train_command_runs_the_tiny_configs(tmp_path):
    model = tiny_model("llava", tmp_path)
    pairs, sft = toy_pairs(tmp_path / "d"), toy_sft(tmp_path / "d")
    assert main(["train", "--config", str(REPO / "configs/train/tiny_cpu.yaml"), f"model.path={model}",
                 f"data.train={pairs}", f"output_dir={tmp_path / 'dpo'}"]) == 0
    assert (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    saved = cfgmod.load(cfgmod.TrainConfig, tmp_path / "dpo" / "config.yaml")
    assert saved.data.train == str(pairs)  # the resolved config is saved in the run directory
    assert main(["train", "--config", str(REPO / "configs/train/sft_tiny_cpu.yaml"), f"model.path={model}",
                 f"data.train={sft}", f"output_dir={tmp_path / 'sft'}"]) == 0
    assert (tmp_path / "sft" / "metrics.jsonl").is_file()


def test_a_missing_data_file_is_named_before_any_model_loads(tmp_path, capsys):
    """The model path does not exist either: the data check comes first, and no run folder is left behind."""
    assert main(["train", "--config", str(REPO / "configs/train/tiny_cpu.yaml"), f"model.path={tmp_path / 'none'}",
                 f"data.train={tmp_path / 'nope.jsonl'}", f"output_dir={tmp_path / 'run'}"]) == 1
    assert f"data.train: no such file '{tmp_path / 'nope.jsonl'}'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_make_model_command(tmp_path, capsys):
    from mmpo.models.tiny import count_parameters, parameter_count

    assert main(["make-model", "--family", "llava", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    n = count_parameters(tmp_path / "m")
    assert f"(tiny, {parameter_count(n)} parameters," in capsys.readouterr().out and 1e3 < n < 1e9
    assert [parameter_count(x) for x in (980, 1_234_567, 7_615_616_512)] == ["980", "1.23M", "7.62B"]
    # a second checkpoint into the same folder would leave the first one's tokenizer files beside it
    with pytest.raises(FileExistsError, match="is not empty: make-model writes a whole checkpoint folder"):
        main(["--debug", "make-model", "--family", "idefics3", "--out", str(tmp_path / "m")])
    with pytest.raises(ValueError, match=r"unknown model family 'llava15'; choose one of llava, .*smolvlm"):
        main(["--debug", "make-model", "--family", "llava15", "--out", str(tmp_path / "n")])
    # --seed: a distillation student unlike its teacher (same seed: the same weights, and a mimic loss of 0)
    assert main(["make-model", "--family", "llava", "--seed", "1", "--out", str(tmp_path / "s")]) == 0
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("m", "s")]
    assert weights[0] != weights[1]


def test_train_with_a_periodic_pope_evaluation(tmp_path):
    """eval_every + eval_config: `mmpo train` evaluates the policy on POPE questions into metrics.jsonl."""
    from mmpo.metrics import read_metrics

    model = tiny_model("llava", tmp_path)
    pairs = toy_pairs(tmp_path / "d")
    questions = tmp_path / "d" / "coco_pope_random.json"
    questions.write_text("".join(json.dumps({"question_id": i, "image": f"img/{i}.png", "label": label,
                                             "text": "is the square red ?"}) + "\n"
                                 for i, label in enumerate(["yes", "no", "no", "no"])))
    eval_cfg = tmp_path / "pope.yaml"
    eval_cfg.write_text(f"model:\n  path: {model}\nquestions: [{questions}]\nimage_root: {tmp_path / 'd'}\n"
                        f"mode: logits\nlimit: 4\nout_dir: {tmp_path / 'unused'}\n")
    args = ["train", "--config", str(REPO / "configs/train/tiny_cpu.yaml"), f"model.path={model}",
            f"data.train={pairs}", f"output_dir={tmp_path / 'run'}", "max_steps=4", "eval_every=2"]
    assert main(args) == 1  # eval_every without eval_config is refused
    assert main([*args, f"eval_config={eval_cfg}"]) == 0
    evals = [r for r in read_metrics(tmp_path / "run") if "eval/pope/random/f1" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert not (tmp_path / "unused").exists()  # the hook writes nothing of its own


def test_string_overrides_are_taken_as_written():
    """YAML would cut `runs/exp #2` at the comment sign and read 2024-01-01 as a date; a string field keeps the text
    (quoted text is still YAML, for escapes), other fields are YAML (numbers, lists)."""
    cfg = cfgmod.load(cfgmod.TrainConfig, None, ["output_dir=runs/exp #2", "data.train=2024-01-01",
                                                 'model.path="a\\tb"', "lr=1e-4", "loss=[{name: ipo}]"])
    assert (cfg.output_dir, cfg.data.train, cfg.model.path) == ("runs/exp #2", "2024-01-01", "a\tb")
    assert cfg.lr == 1e-4 and cfg.loss[0].name == "ipo"


def test_progress_messages_follow_the_current_stderr(monkeypatch):
    """A caller that swaps and closes sys.stderr between runs (pytest, notebooks) gets no logging error, and
    each message prints once."""
    import io
    import logging

    from mmpo.app import cli

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # a fresh process's root logger (pytest adds its own)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    cli.show_progress_messages()
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("mmpo").info("after the swap")
    assert "mmpo: after the swap" in second.getvalue()
    logging.info("a library logging through the root")  # open_clip does; it must not add a second handler
    logging.getLogger("mmpo.lengths").info("once")
    assert second.getvalue().count("once") == 1


def test_a_mistyped_key_gets_a_suggestion(tmp_path):
    """`max_step` -> max_steps (close spelling); `learning_rate` -> lr (transformers' / TRL's name for it)."""
    from mmpo.config import ConfigError, TrainConfig, load

    with pytest.raises(ConfigError, match=r"unknown key 'max_step' in the top level \(did you mean 'max_steps'\?\)"):
        load(TrainConfig, None, ["max_step=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate' .*\(did you mean 'lr'\?\)"):
        load(TrainConfig, None, ["learning_rate=1e-3"])
    path = tmp_path / "c.yaml"
    path.write_text("max_step: 3\nlearning_rate: 0.1\nzzz: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate', 'max_step', 'zzz'\] \(did you mean "
                                          r"'lr' for 'learning_rate', 'max_steps' for 'max_step'\?\)"):
        load(TrainConfig, path)
