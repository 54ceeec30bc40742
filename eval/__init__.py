"""Benchmarks: one module per benchmark (pure-Python scoring) and the EVALUATORS registry.

`EVALUATORS[name](questions_or_data_path, answers_path, ...)` scores a finished answers file; see
each module's `score_answers_file`. Running a model on a
benchmark lives in `eval/runner.py` (answering itself, generate / logits modes, in `eval/answering.py`).
"""

from eval import amber, chair, eventhallusion, pope_metrics, videohallucer_metrics

EVALUATORS = {
    "pope": pope_metrics.score_answers_file,
    "videohallucer": videohallucer_metrics.score_answers_file,
    "chair": chair.score_answers_file,
    "amber": amber.score_answers_file,
    "eventhallusion": eventhallusion.score_answers_file,
}
# Model runners: `eval.runner.RUNNERS` = {name: (config class, run function)}. Not imported here, so
# `import eval` (scoring answer files) stays free of torch / transformers.
