"""Benchmarks: one module per benchmark (pure-Python scoring) and the EVALUATORS registry.

`EVALUATORS[name](questions_or_data_path, answers_path, ...)` scores a finished answers file; see
`eval.pope_metrics.score_answers_file` and `eval.videohallucer_metrics.score_answers_file`. Running a model on a
benchmark lives in `eval/runner.py` (answering itself, generate / logits modes, in `eval/answering.py`).
"""

from eval import pope_metrics, videohallucer_metrics

EVALUATORS = {
    "pope": pope_metrics.score_answers_file,
    "videohallucer": videohallucer_metrics.score_answers_file,
}
# Model runners: `eval.runner.RUNNERS` = {name: (config class, run function)}. Not imported here, so
# `import eval` (scoring answer files) stays free of torch / transformers.
