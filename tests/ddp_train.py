"""Run by test_ddp.py under `accelerate launch` (2 CPU processes): train, then write this rank's parameter sums.

`POISON_RANK=r POISON_CALL=n` makes the n-th loss on rank r NaN (fault injection: one rank's step goes bad).
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)

import mmpo.trainer as trainer  # noqa: E402
from mmpo.config import TrainConfig, load  # noqa: E402
from mmpo.models import load_model  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))


def poisoned(step):
    """Wrap the step so that one call on one rank returns a NaN loss."""
    calls = [0]

    def poisoned_step(batch, progress, **kwargs):
        loss, metrics = step(batch, progress, **kwargs)
        calls[0] += 1
        if RANK == int(os.environ["POISON_RANK"]) and calls[0] == int(os.environ["POISON_CALL"]):
            loss = loss * float("nan")
        return loss, metrics
    return poisoned_step


if "POISON_RANK" in os.environ:
    trainer.preference_step = poisoned(trainer.preference_step)

cfg = load(TrainConfig, None, sys.argv[2:])
model, processor = load_model(cfg.model, cfg.lora, trainable=True)
trainer.train(cfg, model=model, processor=processor)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters() if p.requires_grad}
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"world": world, "sums": sums}, f)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
