"""Benchmarks: one module per benchmark (pure-Python scoring), one model runner per benchmark
(`<name>_runner.py`), and the EVALUATORS registry.

`EVALUATORS[name]` is everything `mmpo eval NAME` offers, the one list the CLI (`mmpo eval`, `mmpo validate`),
the demo and the tests read:
- `command`: its command line (flags, how they score a file, what a run prints): `mmpo/eval/commands.py`, parsed by
  `mmpo/eval/cli.py`;
- `config`: the typed config of a model run (`configs/eval/NAME*.yaml`), or None;
- `run(cfg, model=None, processor=None) -> metrics`: answer every question (resumable), score, write reports;
- `score_file(...)`: score a finished answers file in the reference layout (each module's `score_answers_file`).
How questions are answered (generate / logits): `mmpo/eval/answering.py`; the opening every run shares
(run.json, resuming, answering what predictions.jsonl lacks): `mmpo/eval/runs.py` over `mmpo/eval/predictions.py`.
The scorers themselves import no torch; the runners (and so this package) do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mmpo.eval import (
    amber,
    amber_runner,
    chair,
    chair_runner,
    commands,
    eventhallusion,
    eventhallusion_runner,
    hallusionbench,
    hallusionbench_runner,
    pope_metrics,
    pope_runner,
    videohallucer_metrics,
    videohallucer_runner,
)


@dataclass(frozen=True)
class Evaluator:
    """What one `mmpo eval NAME` can do (see the module docstring); None where a benchmark lacks the part."""

    command: commands.Command
    config: type | None = None
    run: Callable | None = None
    score_file: Callable | None = None


EVALUATORS = {
    "pope": Evaluator(commands.POPE, pope_runner.PopeEvalConfig, pope_runner.run_pope, pope_metrics.score_answers_file),
    "videohallucer": Evaluator(commands.VIDEOHALLUCER, videohallucer_runner.VideoHallucerEvalConfig,
                               videohallucer_runner.run_videohallucer, videohallucer_metrics.score_answers_file),
    "chair": Evaluator(commands.CHAIR, chair_runner.ChairEvalConfig, chair_runner.run_chair, chair.score_answers_file),
    "amber": Evaluator(commands.AMBER, amber_runner.AmberEvalConfig, amber_runner.run_amber, amber.score_answers_file),
    "eventhallusion": Evaluator(commands.EVENTHALLUSION, eventhallusion_runner.EventHallusionEvalConfig,
                                eventhallusion_runner.run_eventhallusion, eventhallusion.score_answers_file),
    "hallusionbench": Evaluator(commands.HALLUSIONBENCH, hallusionbench_runner.HallusionBenchEvalConfig,
                                hallusionbench_runner.run_hallusionbench, hallusionbench.score_answers_file),
    "pope-build": Evaluator(commands.POPE_BUILD),  # builds POPE question files; nothing to run or score
}
