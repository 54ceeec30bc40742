"""What several processes must agree on: which launchers mmpo supports, and collective yes/no decisions.

Under DDP every rank must take part in each synchronised backward and make the same skip decisions, or one
rank waits forever in an all-reduce (a hang) or steps alone (the weights drift apart). These helpers are
no-ops in a single process.
"""

from __future__ import annotations

import torch

from mmpo.config import ConfigError


def all_ranks(flag: bool, world: int, device) -> bool:
    """True when `flag` is true on every process (one tiny all-reduce under DDP), so all ranks decide alike."""
    if world == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def average_gradients(params, world: int) -> None:
    """What DDP's synchronised backward does: the mean of the ranks' gradients, on every rank."""
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def gather_objects(obj, world: int) -> list:
    """Every rank's `obj` (a picklable value), on every rank; [] in a single process."""
    if world == 1:
        return []
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def check_distributed(kind: str) -> None:
    """One process or DDP only. Under FSDP / DeepSpeed the LoRA weights and optimizer states are sharded, and
    the adapter saving, checkpoints and adapter-off reference here do not gather them (never run: no GPUs)."""
    if kind.split(".")[-1] in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ConfigError(f"accelerate {kind}: mmpo trains in one process or with DDP "
                                 "(configs/accelerate/ddp.yaml); LoRA on a 7B model fits one GPU per process")
