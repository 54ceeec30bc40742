"""`mmpo eval NAME`: run a model from a config, score an answers file, or (pope-build) build POPE question files
from COCO-style annotations. mmpo/app/cli.py calls `main(NAME, flags)`.

Every parser is built here from the benchmark's `Command` (`EVALUATORS[NAME].command`, mmpo/eval/commands.py): its
own flags, plus, for a benchmark with a runner, `--config F [key=value ...]` (load F into its config class and run
its runner, both from `EVALUATORS`: `_run_config`), `--out` and `--unanswered`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmpo.config import load, to_dict
from mmpo.eval import EVALUATORS, files, sharding
from mmpo.metrics import Trackers, check_trackers, flatten
from mmpo.model_card import append_eval_results
from mmpo.models.loading import other_base


def make_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `mmpo eval NAME`: the command's own flags, and the flags every runnable benchmark has."""
    evaluator = EVALUATORS[name]
    p = argparse.ArgumentParser(prog=f"mmpo eval {name}", description=evaluator.command.usage)
    for flag in evaluator.command.flags:
        p.add_argument(flag.name, help=flag.help, **flag.options)
    if evaluator.config is None:  # pope-build: builds files, runs nothing
        return p
    p.add_argument("--out", help="write the metrics JSON here")
    if evaluator.command.unanswered:
        p.add_argument("--unanswered", default="error", choices=files.UNANSWERED,
                       help="error: every question needs an answer; skip: score the answered ones (the answers file "
                            "of a run with on_bad_media: skip)")
    p.add_argument("--config", help=f"eval YAML (configs/eval/{name}*.yaml): run a model")
    p.add_argument("overrides", nargs="*", help="key=value overrides for --config")
    return p


def main(name: str, argv: list[str]) -> int:
    """`mmpo eval NAME [flags]`: with `--config`, run the model and print the summary; else score the named files
    and print the metrics (pope-build: build the question files). Returns the exit code."""
    command = EVALUATORS[name].command
    p = make_parser(name)
    if EVALUATORS[name].config is None:
        command.act(p.parse_args(argv), p)
        return 0
    a = p.parse_intermixed_args(argv)
    if a.config:
        cfg, metrics = _run_config(name, a)
        print(command.summary(cfg, metrics))
        return 0
    if not all(getattr(a, flag.lstrip("-").replace("-", "_")) for flag in command.needs):
        needs = ", ".join(command.needs[:-1]) + " and " + command.needs[-1]
        p.error(f"give {needs} (score a file) or --config (run a model)")
    metrics = command.act(a, p)
    print(json.dumps(command.printed(metrics), indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _run_config(name: str, a: argparse.Namespace) -> tuple[object, dict]:
    """Load `--config` (+ overrides) into the benchmark's config class and run its model runner.

    Returns:
        (config, metrics).
    """
    evaluator = EVALUATORS[name]
    cfg = load(evaluator.config, a.config, a.overrides)
    check_trackers(cfg.report_to, f"{a.config}: report_to")  # a missing package: before answering
    metrics = sharding.run(evaluator.run, cfg)  # one process, or this rank's share of N (mmpo/eval/sharding.py)
    if metrics is None:  # another rank of an N-process run: the main one scores, reports and prints
        raise SystemExit(0)
    publish(name, cfg, metrics)
    return cfg, metrics


def publish(name: str, cfg, metrics: dict) -> None:
    """The metrics to the configured trackers, lmms-eval's layout of the run (where the benchmark has one), and the
    model card of the evaluated adapter (or mmpo model)."""
    numbers = {k.replace(".", "/"): v for k, v in flatten(metrics).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    trackers = Trackers(cfg.report_to, cfg.out_dir, run_name=f"eval-{name}-{Path(cfg.out_dir).name}",
                        config={"benchmark": name, **to_dict(cfg)})
    trackers.log({f"{name}/{k}": v for k, v in numbers.items()}, step=0)
    trackers.finish()
    lmms = EVALUATORS[name].command.lmms
    written = lmms(cfg, metrics) if lmms else None
    if written is not None:  # lmms-eval's results/samples layout, for its users
        print(f"lmms-eval layout: {written}")
    trained_on = other_base(cfg.model.adapter, cfg.model.path) if cfg.model.adapter else ""
    if trained_on:  # numbers of another base model do not belong on this adapter's card
        print(f"not added to the model card of {cfg.model.adapter}: it was trained on {trained_on!r}, this "
              f"evaluation used model.path {cfg.model.path!r}")
        return
    card = append_eval_results(cfg.model.adapter or cfg.model.path, name, metrics, cfg.out_dir)
    if card is not None:
        print(f"results added to the model card {card}")
