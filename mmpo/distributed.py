"""Several processes: joining the process group, replicating (DDP) or sharding (FSDP2) the policy, and the
yes/no decisions every rank must make alike.

mmpo sets the process group up itself from the variables every launcher sets (`accelerate launch` and
`torchrun`: WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), with gloo on CPU and NCCL on GPUs, so one code
path runs on both: accelerate's own FSDP plugin does nothing on a machine without CUDA (it reports one
process), and its DDP wrapper is only a `DistributedDataParallel` around the step module.

- DDP (the default with several processes): each rank holds the whole policy; the step module is wrapped in
  `DistributedDataParallel`, which all-reduces gradients in the last micro-batch's backward.
- FSDP2 (`parallel: fsdp`, or launched with configs/accelerate/fsdp.yaml): `fully_shard` on every decoder
  layer of the language model and on the root, so parameters, gradients and optimizer states are split over
  the ranks; forward and backward gather a layer's parameters just in time. Any forward through the policy
  (the step, the adapters-off reference, a schedule's own loss) takes part, since FSDP2 hooks the modules.

Under either, every rank must take part in each synchronised backward and make the same skip decisions,
or one rank waits forever (a hang) or steps alone (the weights drift apart): `all_ranks`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mmpo.config import ConfigError

NO_4BIT_FSDP = ("4-bit weights cannot be sharded with FSDP here: train QLoRA with DDP (configs/accelerate/ddp.yaml; "
                "LoRA on a 4-bit 7B model fits one GPU per process)")


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int
    world: int
    device: torch.device  # where this rank's model and batches live
    sharded: bool  # FSDP2 (parameters split over the ranks) rather than DDP (each rank holds them all)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start_processes(parallel: str = "auto", timeout_min: float = 180) -> Processes:
    """Join the process group when a launcher started several processes; one process otherwise.

    Call it before loading a model: it picks this rank's GPU (LOCAL_RANK), which "cuda" then means. Calling it
    again is harmless.

    Args:
        parallel: auto (FSDP2 when accelerate launched with an FSDP config, else DDP) | ddp | fsdp.
        timeout_min: how long a rank waits for the others in a collective. NCCL's default, 10 minutes, is shorter
            than work only the main process does while the others wait (a periodic evaluation).

    Returns:
        The Processes.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        raise ConfigError("DeepSpeed launches are not supported: use configs/accelerate/fsdp.yaml (FSDP2 shards "
                          "parameters, gradients and optimizer states like ZeRO-3) or configs/accelerate/ddp.yaml")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_min))
    return Processes(rank=dist.get_rank() if world > 1 else 0, world=world, device=device,
                     sharded=will_shard(parallel))


def will_shard(parallel: str) -> bool:
    """FSDP2 for this launch: several processes, and `parallel: fsdp` or (auto) accelerate's FSDP config."""
    launched_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and (parallel == "fsdp" or (parallel == "auto" and launched_fsdp))


def decoder_layers(model) -> list:
    """The language model's decoder layers (the FSDP2 sharding unit), found by the layer list's module path
    (`*language_model.layers` in LLaVA and Qwen-VL, `*text_model.layers` in SmolVLM / Idefics3)."""
    layers = [m for name, m in model.named_modules()
              if name.endswith(("language_model.layers", "text_model.layers")) and isinstance(m, torch.nn.ModuleList)]
    if len(layers) != 1:
        raise ValueError(f"FSDP: cannot find the decoder layers of {type(model).__name__} to shard: looked for one "
                         f"ModuleList named '*language_model.layers' or '*text_model.layers', found {len(layers)}")
    return list(layers[0])


def shard_model(model, precision: str, procs: Processes):
    """FSDP2: `fully_shard` every decoder layer, then the root (the vision tower and projector are sharded with
    the root: they are small next to the language model). bf16/fp16 compute with fp32 gradient reduction on
    CUDA, as mmpo's autocast does in one process; fp32 on CPU.

    Returns:
        The same model, its parameters now DTensors split over the ranks.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if any(getattr(p, "quant_state", None) is not None for p in model.parameters()):
        raise ConfigError(NO_4BIT_FSDP)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if procs.device.type == "cuda" else None
    policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def shard_from_main(model, precision: str, procs: Processes):
    """FSDP2 with the main rank's weights: shard the policy on every rank, then send the main rank's values.

    The main rank holds the loaded model (on CPU); the other ranks hold either a weightless skeleton on the meta
    device (`mmpo.models.loading.load_skeleton`: an N-process run reads and holds one copy of the model, not
    N) or a model a schedule built alike everywhere. Either way every shard ends up equal to the main rank's
    model (fresh LoRA included), and its buffers (RoPE tables, which no state dict holds) are copied too.
    A model sharded before (a schedule's second stage) is left as it is.

    Returns:
        The sharded model.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return model
    full = dict(model.state_dict()) if procs.is_main else {}
    on_meta = any(p.is_meta for p in model.parameters())
    shard_model(model, precision, procs)
    if on_meta:
        model.to_empty(device=procs.device)
    else:
        model.to(procs.device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in model.buffers():
        dist.broadcast(local_part(buffer), src=0)
    return model


def broadcast_from_main(model, procs: Processes) -> None:
    """Every rank's parameters and buffers set to the main rank's (what DDP's constructor does), for a model
    trained without the DDP wrapper (a schedule's own loss; its gradients are averaged by hand)."""
    if procs.world > 1:
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def reshard(model, procs: Processes) -> None:
    """Back to the sharded parameters after forwards without a backward (the reference pre-pass, an evaluation):
    FSDP2 keeps its root group gathered after a forward until the backward that never comes."""
    if procs.sharded:
        model.reshard()


def replicate(step_module, procs: Processes):
    """DDP around the step module (the one whose forward the step runs), on this rank's device."""
    ids = [procs.device.index] if procs.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(step_module, device_ids=ids)


@contextlib.contextmanager
def gradient_sync(step_module, procs: Processes, sync: bool):
    """DDP reduces gradients only when `sync` (the last micro-batch of an accumulated step); the trainer averages
    by hand when that micro-batch is skipped. FSDP2 reduce-scatters every micro-batch's gradients into the
    shards: more traffic with accumulation, but nothing is left unreduced when a micro-batch is skipped."""
    if not sync and isinstance(step_module, torch.nn.parallel.DistributedDataParallel):
        with step_module.no_sync():
            yield
    else:
        yield


def all_ranks(flag: bool, world: int, device) -> bool:
    """True when `flag` is true on every process (one tiny all-reduce), so all ranks decide alike."""
    if world == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_ranks(values: dict[str, float], procs: Processes) -> dict[str, float]:
    """The ranks' mean of each value (every rank logs the same keys), so a logged loss is the whole batch's."""
    if procs.world == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=procs.device)
    dist.all_reduce(tensor)
    return {k: v / procs.world for k, v in zip(keys, tensor.tolist(), strict=True)}


def average_gradients(params, world: int) -> None:
    """What DDP's synchronised backward does: the mean of the ranks' gradients, on every rank."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def gather_objects(obj, world: int) -> list:
    """Every rank's `obj` (a picklable value), on every rank; [] in a single process."""
    if world == 1:
        return []
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective under FSDP2); any other tensor as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def local_part(value: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    return value.to_local() if hasattr(value, "to_local") else value
