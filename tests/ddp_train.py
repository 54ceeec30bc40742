"""Run by test_ddp.py under `accelerate launch` (2 CPU processes): train, then write this rank's parameter sums."""

import json
import sys

import torch

torch.set_num_threads(1)

from mmpo.config import TrainConfig, load  # noqa: E402
from mmpo.models import load_model  # noqa: E402
from mmpo.trainer import train  # noqa: E402

cfg = load(TrainConfig, None, sys.argv[2:])
model, processor = load_model(cfg.model, cfg.lora, trainable=True)
train(cfg, model=model, processor=processor)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters() if p.requires_grad}
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"world": world, "sums": sums}, f)
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
