"""Run by test_fsdp.py under `accelerate launch`: `mmpo train` that dies at step CRASH_AT, as a killed run would.

The crash comes from the evaluation hook on every rank (under DDP the trainer runs it on the main one only, so
the others are stopped by the launcher), after the checkpoints of earlier steps were written; the test then
reruns the documented command and it resumes.
"""

import os
import sys

import torch

torch.set_num_threads(1)

from mmpo.config import TrainConfig, load  # noqa: E402
from mmpo.trainer import train  # noqa: E402


def crash(model, processor, step):
    if step == int(os.environ["CRASH_AT"]):
        raise SystemExit(f"killed at step {step}")
    return {}


assert sys.argv[1] == "--config"  # the same arguments as `mmpo train`
train(load(TrainConfig, sys.argv[2], sys.argv[3:] + ["eval_every=1"]), eval_hook=crash)
