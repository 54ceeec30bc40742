"""Benchmarks: one module per benchmark (pure-Python scoring), model runners, and the EVALUATORS registry.

`EVALUATORS[name]` is everything `mmpo eval NAME` offers, the one list the CLI (`mmpo eval`, `mmpo validate`),
the demo and the tests read:
- `config`: the typed config of a model run (`configs/eval/NAME*.yaml`), or None;
- `run(cfg, model=None, processor=None) -> metrics`: answer every question (resumable), score, write reports;
- `score_file(...)`: score a finished answers file in the reference layout (each module's `score_answers_file`);
- `command(argv) -> exit code`: the `mmpo eval NAME` subcommand (`mmpo/eval/cli.py`).
How questions are answered (generate / logits): `mmpo/eval/answering.py`; predictions and resuming: `mmpo/eval/predictions.py`.
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
    cli,
    eventhallusion,
    eventhallusion_runner,
    hallusionbench,
    hallusionbench_runner,
    pope_metrics,
    runner,
    videohallucer_metrics,
)


@dataclass(frozen=True)
class Evaluator:
    """What one `mmpo eval NAME` can do (see the module docstring); None where a benchmark lacks the part."""

    command: Callable[[list[str]], int]
    config: type | None = None
    run: Callable | None = None
    score_file: Callable | None = None


EVALUATORS = {
    "pope": Evaluator(cli.cli_pope, runner.PopeEvalConfig, runner.run_pope, pope_metrics.score_answers_file),
    "videohallucer": Evaluator(cli.cli_videohallucer, runner.VideoHallucerEvalConfig, runner.run_videohallucer,
                               videohallucer_metrics.score_answers_file),
    "chair": Evaluator(cli.cli_chair, chair_runner.ChairEvalConfig, chair_runner.run_chair, chair.score_answers_file),
    "amber": Evaluator(cli.cli_amber, amber_runner.AmberEvalConfig, amber_runner.run_amber, amber.score_answers_file),
    "eventhallusion": Evaluator(cli.cli_eventhallusion, eventhallusion_runner.EventHallusionEvalConfig,
                                eventhallusion_runner.run_eventhallusion, eventhallusion.score_answers_file),
    "hallusionbench": Evaluator(cli.cli_hallusionbench, hallusionbench_runner.HallusionBenchEvalConfig,
                                hallusionbench_runner.run_hallusionbench, hallusionbench.score_answers_file),
    "pope-build": Evaluator(cli.cli_pope_build),  # builds POPE question files; nothing to run or score
}
