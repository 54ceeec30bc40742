"""Run by test_eval_sharding.py under `accelerate launch`: `mmpo eval ...`, where rank KILL_RANK (if set) dies
(os._exit, as a killed process) right after appending its KILL_AFTER-th batch of answers."""

import os
import sys

import torch

torch.set_num_threads(1)

from mmpo.app.cli import main  # noqa: E402
from mmpo.eval import predictions  # noqa: E402

if os.environ.get("KILL_RANK") == os.environ.get("RANK"):
    real, calls = predictions.append_rows, []

    def append_then_die(path, rows):
        real(path, rows)
        calls.append(path)
        if len(calls) == int(os.environ["KILL_AFTER"]):
            os._exit(9)

    predictions.append_rows = append_then_die
sys.exit(main(sys.argv[1:]))
