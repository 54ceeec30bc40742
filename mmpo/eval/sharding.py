"""Evaluation on N processes: the questions split over the ranks, answered in parallel, gathered in order.

`accelerate launch --num_processes N -m mmpo eval NAME --config F` (or `torchrun --nproc_per_node N -m mmpo
eval ...`) starts N copies of the command; `run` joins them into one process group (gloo on CPU, NCCL on GPUs,
each rank on its own GPU: `mmpo.distributed.start_processes`), and every runner goes through the one place
that answers questions, `eval.predictions.answer_missing`, which:

1. waits until every rank has read the answers already stored (so all ranks see the same unanswered list),
2. gives rank r its contiguous share of that list (`share`; contiguous keeps a media file's questions together),
3. appends its answers to its own `predictions.rank{r}.jsonl` as each batch ends (a killed rank loses at most
   one batch; a rerun, with any number of processes, reads every rank file and answers only what is missing),
4. gathers every rank's answers to the main rank, which appends them to predictions.jsonl in question order,
   removes the rank files and records `world_size` and each rank's `shares` in run.json,
5. and lets the other ranks go (`NotMainRank`): the main rank alone scores and writes the reports, so the
   answer files and metrics are those of one process.

Only `run` turns this on: a runner that one rank of a training job calls (the others not) stays one process.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.distributed as dist


class NotMainRank(Exception):
    """Raised on ranks other than 0 once their answers are gathered: the main rank scores and writes alone."""


_SHARDED = {"on": False}  # set by `run` only: a runner called by one rank of a training job stays one process


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the evaluation's process group; (0, 1) outside `run` or outside a group."""
    if _SHARDED["on"] and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def gather(obj: Any) -> list:
    """Every rank's `obj`, in rank order, on every rank (one process: [obj])."""
    world = rank_world()[1]
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def share(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous part of n items: sizes differ by at most one, the first ranks take the extra."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def run(evaluate: Callable, cfg) -> dict | None:
    """`evaluate(cfg)` under the launcher's processes; the metrics on the main rank, None on the others."""
    from mmpo.distributed import start_processes

    start_processes("ddp")  # one process: nothing to join
    _SHARDED["on"] = True
    try:
        result = evaluate(cfg)
    except NotMainRank:
        result = None
    except BaseException:
        _leave()  # no barrier: the other ranks may never reach it
        raise
    # Every rank waits here for the main one's scoring: a rank that tore the group down while its last gather's
    # bytes were still on their way aborted in gloo ("terminate called without an active exception", seen in CI).
    barrier()
    _leave()
    return result


def _leave() -> None:
    _SHARDED["on"] = False
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
