"""The training loop: DPO-family preference optimisation and SFT for LLaVA-style models.

`train` is `setup` (the folder, seeds, model, data, step, optimizer, and the resumed state), then `loop`, which
reads top to bottom: for each optimizer step accumulate micro-batches, clip, guard against NaN, step, log,
evaluate, checkpoint; then `finish`. What a step computes is a `batch_loss` function chosen by the stage
(`preference_step` for DPO variants, `sft_step` for SFT); schedules (multi-round, distillation) call `train` with
their own model, reference or batch_loss instead of copying the loop.

The reference policy is the policy with its LoRA adapters disabled (never a second copy of the
weights), or log-probs precomputed once and cached next to the data (`precompute_reference`), or a
teacher passed in by the distillation schedule. Reference-free losses (SFT alone) skip it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mmpo import config as cfgmod
from mmpo import folder_lock
from mmpo import reference as ref
from mmpo.batches import PairBatch, PairCollator, SFTBatch, SFTCollator, SkipLedger, make_loader, read_records
from mmpo.checkpoint import (
    check_rerun,
    finished_with_this_config,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mmpo.config import TrainConfig, to_dict
from mmpo.determinism import environment, make_deterministic
from mmpo.distributed import (
    NO_4BIT_FSDP,
    Processes,
    all_ranks,
    average_gradients,
    broadcast_from_main,
    full_tensor,
    gather_objects,
    gradient_sync,
    local_part,
    mean_over_ranks,
    replicate,
    reshard,
    shard_from_main,
    start_processes,
)
from mmpo.lengths import check_lengths
from mmpo.logprobs import plain_logps
from mmpo.losses import LossInputs, LossTerm, requires_of
from mmpo.metrics import MetricLogger, check_trackers, read_metrics
from mmpo.model_card import data_facts, write_model_card
from mmpo.models import load_model
from mmpo.models.loading import has_adapter, load_skeleton
from mmpo.requirements import PairLogps, needed, pair_logps, reference_pass

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- forward passes

class PolicyLogps(torch.nn.Module):
    """Wraps the policy so that one `forward` computes every log-prob of a step.

    DDP expects exactly one forward per backward; the shared-prefix, corrupt and bag passes are all
    inside this one call, so `DistributedDataParallel` can wrap it unchanged (`mmpo.distributed.replicate`).
    PaMi's distances are measured here, under the policy (`js_top_k`: the config's `pami.js_top_k`).
    """

    def __init__(self, model, requires: set, shared_prefix: bool, js_top_k: int = 0):
        super().__init__()
        self.model, self.requires, self.shared_prefix, self.js_top_k = model, requires, shared_prefix, js_top_k

    def forward(self, batch: PairBatch) -> PairLogps:
        return pair_logps(self.model, batch, self.requires, self.shared_prefix, js_top_k=self.js_top_k)


class AnswerLogps(torch.nn.Module):
    """SFT's step module: summed answer log-probs and token counts of the batch's answers."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return plain_logps(self.model, batch.prompt, batch.answer)


# ----------------------------------------------------------------------------- set-up helpers

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_cosine(optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over ceil(warmup_ratio * steps) steps, then cosine decay to 0 (TRL / LLaVA DPO scripts).

    One difference from transformers' `get_cosine_schedule_with_warmup`: its factor at step 0 is 0, so the first
    update is wasted with lr 0; here step s < w uses (s + 1) / (w + 1), which starts above 0 and reaches the
    peak at step w, where the cosine takes over.
    """
    warmup = int(math.ceil(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(precision: str, device: torch.device):
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def resolve_media_root(cfg: TrainConfig) -> str:
    """The training data's media root: data.media_root > the data's manifest.json > the data file's folder."""
    from mmpo.records import default_media_root  # the one rule shared with builders and schedules

    if cfg.data.format != "mmpo":  # a set in another layout: its rows' media are written into the run folder
        return str(Path(cfg.output_dir).resolve() / "data")
    return str(default_media_root(cfg.data.train, cfg.data.media_root))


def batch_tokens(batch: PairBatch | SFTBatch) -> int:
    """Tokens the step read: prompts (media included) and answers (the tokens/s metric)."""
    answers = [batch.answer] if isinstance(batch, SFTBatch) else [batch.chosen, batch.rejected]
    return sum(int(part["attention_mask"].sum()) for part in [batch.prompt, *answers])


def load_policy(cfg: TrainConfig, procs: Processes):
    """The policy and its processor. Sharded: only the main rank reads the weights (on CPU; FSDP2 moves the
    shards to the GPUs), the others build a weightless skeleton and receive their shards from it."""
    if not procs.sharded:
        return load_model(cfg.model, cfg.lora, trainable=True)
    if cfg.model.load_in_4bit:
        raise cfgmod.ConfigError(NO_4BIT_FSDP)
    if procs.is_main:
        return load_model(dataclasses.replace(cfg.model, device="cpu"), cfg.lora, trainable=True)
    return load_skeleton(cfg.model, cfg.lora, trainable=True)


def make_reference(cfg: TrainConfig, model, requires: set, records, collate, procs: Processes, device):
    """The reference callable: the policy with adapters off, or (`precompute_reference`) its cached table."""
    if not cfg.precompute_reference:
        if not has_adapter(model):
            raise cfgmod.ConfigError(cfgmod.NO_ADAPTER_REFERENCE)  # a schedule passed a model without adapter
        return ref.adapter_reference(model, requires, cfg.shared_prefix)
    cache = ref.cache_path(cfg, records.digest, requires, collate.max_length, collate.media_root)
    table = ref.precompute_reference(ref.adapter_reference(model, requires, cfg.shared_prefix), records, collate,
                                     cfg.batch_size, cache, procs, device,
                                     context=lambda: autocast(cfg.precision, device))  # as the live reference runs
    return ref.cached_reference(table, device)


# ----------------------------------------------------------------------------- one step

def preference_step(batch: PairBatch, progress: float, *, policy, reference, terms: list[LossTerm],
                    requires: set) -> tuple[torch.Tensor, dict]:
    """The loss of one DPO-family micro-batch: policy log-probs -> reference log-probs -> weighted sum of terms.

    Args:
        batch: the micro-batch.
        progress: 0..1 through training (schedules inside losses, e.g. PaMi's close-to-far temperature).
        policy: `PolicyLogps` (possibly DDP-wrapped): every policy forward of the step in one call.
        reference: batch -> reference `PairLogps` (adapters off, the cached table, or a teacher).
        terms: the config's `LossTerm`s (weight, built loss).
        requires: what the policy's pass computed ("reference", "corrupt", "bag", "gt", "delta", "wpo").

    Returns:
        (loss, metrics).
    """
    pol = policy(batch)
    ref = reference(batch) if "reference" in requires else None
    # The pair's own inputs, then what each requirement fills in (mmpo.requirements: WPO scales the weight).
    fields = {"policy_chosen": pol.chosen, "policy_rejected": pol.rejected, "chosen_tokens": pol.chosen_tokens,
              "rejected_tokens": pol.rejected_tokens, "weight": batch.weight, "progress": progress}
    needs = needed(requires)
    for need in needs:
        fields.update(need.fill(batch, pol, ref))
    inputs = LossInputs(**fields)
    total, metrics = 0.0, {}
    for term in terms:
        value, term_metrics = term.loss(inputs)
        total = total + term.weight * value
        metrics.update(term_metrics)
    for need in needs:
        metrics.update(need.metrics(pol))
    metrics["logps/chosen"] = (pol.chosen / pol.chosen_tokens.clamp(min=1)).mean().item()
    metrics["logps/rejected"] = (pol.rejected / pol.rejected_tokens.clamp(min=1)).mean().item()
    return total, metrics


def sft_step(batch: SFTBatch, progress: float, *, policy) -> tuple[torch.Tensor, dict]:
    """The loss of one SFT micro-batch: token-averaged NLL of the answer (prompt and media tokens masked)."""
    logp, count = policy(batch)
    loss = -logp.sum() / count.sum().clamp(min=1)
    return loss, {"sft/nll": loss.item()}


# ----------------------------------------------------------------------------- set-up: everything before step 1

@dataclass(frozen=True)
class Method:
    """What a schedule's own `batch_loss` trains (a distillation stage), said on the run's bar and loss lines, in
    its model card and its divergence message; a plain run says its stage and loss terms instead."""

    label: str  # the bar's name: train[label]
    description: str = ""  # the model card's Method line ("" = the stage and loss terms)


@dataclass
class Run:
    """What `setup` prepares and the loop uses: one training run, ready for its first (or resumed) step."""

    cfg: TrainConfig
    procs: Processes
    model: torch.nn.Module  # the policy (an adapter on it, or full weights; sharded under FSDP2)
    processor: Any
    device: torch.device
    params: list[torch.Tensor]  # the trainable tensors (taken while FSDP2's are the sharded ones)
    records: Any  # the training records (a lazy `RecordFile`, or a set in another layout)
    invalid: list[str]  # lines refused on read ("file:line: reason")
    terms: list[LossTerm]  # the loss terms (empty for SFT and a schedule's own batch_loss)
    step_module: torch.nn.Module  # the module whose forward the step runs (DDP wraps this one)
    batch_loss: Callable  # (batch, progress) -> (loss, metrics): `preference_step`, `sft_step` or a schedule's
    method: Method  # what batch_loss trains, in words
    average_by_hand: bool  # a schedule's batch_loss under DDP: gradients averaged after backward
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any  # DataLoader of collated micro-batches, from the start step on
    total_steps: int
    start_step: int  # 0, or the resumed checkpoint's step
    nonfinite: dict  # {"nonfinite_steps", "consecutive"}: the divergence guard's counters (checkpointed)
    skips: SkipLedger  # records left out, by reason (checkpointed)
    prepass_s: float  # seconds spent precomputing (or loading) reference log-probs

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir)


def setup(cfg: TrainConfig, procs: Processes, model=None, processor=None, reference: Callable | None = None,
          batch_loss: Callable | None = None, method: Method | None = None) -> Run:
    """Everything before step 1, in the order it must happen: the run folder, the seeds, the model, the data,
    the step function (and its reference), the optimizer and schedule, then the resumed state, if any.
    `train`'s arguments have the same meaning here."""
    run_dir = Path(cfg.output_dir)
    check_rerun(cfg, run_dir, procs)  # and writes this run's config.yaml
    check_trackers(cfg.report_to)  # a missing tracker package stops every rank before any loading
    seed_everything(cfg.seed)  # the same fresh LoRA on every rank (a schedule's model is built alike everywhere)
    if cfg.deterministic:  # deterministic kernels, cuBLAS workspace, no cuDNN autotuning (README Reproducibility)
        make_deterministic()
    if procs.is_main:  # run.json: what the numbers depend on besides config.yaml (versions, threads, switches)
        (run_dir / "run.json").write_text(json.dumps(environment(cfg.seed, cfg.deterministic), indent=1) + "\n")
    model, processor, device, params = prepare_model(cfg, procs, model, processor)
    records, invalid, collate = prepare_data(cfg, procs, model, processor)
    per_epoch = max(len(records) // (cfg.batch_size * procs.world), 1)
    total_steps = cfg.max_steps or max(int(cfg.epochs * per_epoch / cfg.grad_accum), 1)
    if procs.is_main:
        note_epoch_remainder(len(records), cfg.batch_size, procs.world, cfg.data.shuffle)
    # The step: its module (one forward per backward, for DDP), its reference, its loss terms. A stateful loss
    # (beta_dpo's running statistics) starts fresh in every run, even from a config object used before.
    terms = [] if cfg.stage == "sft" else copy.deepcopy(cfg.loss)
    requires = requires_of(terms)
    policy_requires = requires | ({"wpo"} if cfg.use_weighting else set())  # WPO weights: the policy pass only
    step_module, average_by_hand = make_step_module(cfg, procs, model, policy_requires, schedule=batch_loss)
    prepass_s = 0.0  # seconds spent precomputing (or loading) reference log-probs before step 1
    if batch_loss is None and reference is None and "reference" in requires:
        started = time.perf_counter()
        reference = make_reference(cfg, model, reference_pass(requires), records, collate, procs, device)
        prepass_s = time.perf_counter() - started
    reshard(model, procs)
    if batch_loss is None:
        batch_loss = (functools.partial(sft_step, policy=step_module) if cfg.stage == "sft" else
                      functools.partial(preference_step, policy=step_module, reference=reference, terms=terms,
                                        requires=policy_requires))
    optimizer = make_optimizer(cfg, params)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio)
    step, nonfinite, skips = resume(cfg, procs, model, optimizer, scheduler, terms, invalid)
    loader = make_loader(records, collate, cfg.batch_size, cfg.seed, step * cfg.grad_accum,
                         total_steps * cfg.grad_accum, cfg.data.shuffle, cfg.data.num_workers, procs.world, procs.rank)
    return Run(cfg=cfg, procs=procs, model=model, processor=processor, device=device, params=params, records=records,
               invalid=invalid, terms=terms, step_module=step_module, batch_loss=batch_loss,
               method=method or Method(run_label(cfg)),
               average_by_hand=average_by_hand, optimizer=optimizer, scheduler=scheduler, loader=loader,
               total_steps=total_steps, start_step=step, nonfinite=nonfinite, skips=skips, prepass_s=prepass_s)


def prepare_model(cfg: TrainConfig, procs: Processes, model, processor):
    """The policy ready to train: loaded (unless a schedule passed one), activation checkpointing, FSDP2 shards.

    Returns:
        (model, processor, device, trainable params).
    """
    if model is None:
        model, processor = load_policy(cfg, procs)
    seed_everything(cfg.seed + procs.rank)  # from here on, each rank its own stream (dropout)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if procs.sharded:
        shard_from_main(model, cfg.precision, procs)
    device = procs.device if procs.sharded else next(model.parameters()).device
    # Taken now, while FSDP2's parameters are the sharded ones: after a forward without backward its root group
    # stays gathered, and model.parameters() would then list the gathered copies, which never get gradients.
    params = [p for p in model.parameters() if p.requires_grad]
    return model, processor, device, params


def prepare_data(cfg: TrainConfig, procs: Processes, model, processor):
    """The training records, validated on read (file:line:field errors, or counted skips), the length pre-flight,
    and the collator (with what the loss terms require).

    Returns:
        (records, invalid lines, collate).
    """
    sft = cfg.stage == "sft"
    media_root = resolve_media_root(cfg)
    if cfg.data.format != "mmpo":  # validated before step 1, each row converted when a batch reads it
        from mmpo.formats import read_source_records  # pyarrow and the format readers, only for such a set

        records, invalid = read_source_records(cfg.data.format, cfg.data.train, media_root, "sft" if sft else "pair",
                                               cfg.data.on_bad_record, cfg.data.media_root or None)
    else:
        records, invalid = read_records(cfg.data.train, media_root, "sft" if sft else "pair", cfg.data.on_bad_record)
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable records ({len(invalid)} skipped)")
    if len(records.media_types) > 1 and cfg.batch_size > 1:  # a shuffled mix would fail at a random step
        firsts = ", ".join(f"{kind}s from {where}" for kind, where in records.media_types.items())
        raise ValueError(f"{cfg.data.train} mixes media types ({firsts}), and a batch holds one type: split the file "
                         "by media_type (or train with batch_size: 1)")
    max_length = check_lengths(cfg, records, processor, media_root, model, procs.is_main)
    common = dict(processor=processor, media_root=media_root, num_frames=cfg.model.num_frames,
                  max_length=max_length, on_bad=cfg.data.on_bad_record)
    requires = frozenset() if sft else frozenset(requires_of(cfg.loss))
    return records, invalid, SFTCollator(**common) if sft else PairCollator(**common, requires=requires)


def make_step_module(cfg: TrainConfig, procs: Processes, model, requires: set, schedule: Callable | None):
    """The module whose one forward computes every policy log-prob of a step (`PolicyLogps` / `AnswerLogps`).

    Only the step module is wrapped by DDP (DDP must wrap the module whose forward the step runs); the data order,
    the optimizer and the schedule are the same code for 1 or N ranks, so resume and the batches a rank draws do
    not depend on it. A schedule's own batch_loss calls the model directly, not through a DDP wrapper: its
    gradients are then averaged by hand (FSDP2 needs neither: it hooks the model's own modules).

    Returns:
        (step module, whether gradients are averaged by hand).
    """
    module = AnswerLogps(model) if cfg.stage == "sft" else PolicyLogps(model, requires, cfg.shared_prefix,
                                                                        cfg.pami.js_top_k)
    by_hand = procs.world > 1 and not procs.sharded and schedule is not None
    if by_hand:
        broadcast_from_main(model, procs)
    elif procs.world > 1 and not procs.sharded:
        module = replicate(module, procs)
    return module, by_hand


def resume(cfg: TrainConfig, procs: Processes, model, optimizer, scheduler, terms: list[LossTerm], invalid: list):
    """The latest checkpoint's state, if the run folder has one: parameters, optimizer, scheduler, RNG, loss
    states, skipped records and the data position.

    Returns:
        (step, nonfinite counters, skip ledger): (0, zeros, a fresh ledger) for a new run.
    """
    last = latest_checkpoint(Path(cfg.output_dir))
    if last is None:
        return 0, {"nonfinite_steps": 0, "consecutive": 0}, SkipLedger(invalid_lines=len(invalid))
    step, extra = load_checkpoint(last, model, optimizer, scheduler, procs)
    if "nonfinite" not in extra:
        raise ValueError(f"{last}: a checkpoint from an older mmpo, which this one cannot resume; use another "
                         "output_dir")
    states = extra.get("loss_states", [])
    if len(states) != len(terms):  # `loss:` changed under allow_config_change
        log.warning("%s holds the states of %d loss terms, the config has %d: their running states start fresh",
                    last, len(states), len(terms))
        states = [None] * len(terms)
    for term, state in zip(terms, states):
        if state is not None and hasattr(term.loss, "load_state_dict"):
            term.loss.load_state_dict(state)
    if procs.is_main:
        log.info("resumed from %s at step %d", last, step)
    return step, extra["nonfinite"], SkipLedger(len(invalid), extra["skips"])


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, model=None, processor=None, reference: Callable | None = None,
          batch_loss: Callable | None = None, eval_hook: Callable | None = None, method: Method | None = None) -> Path:
    """Train a model as `cfg` says and write the run directory: `setup`, then `loop`, then `finish`.

    Args:
        cfg: the resolved training config.
        model, processor: an already loaded policy (schedules pass merged models); loaded from
            `cfg.model` / `cfg.lora` when None.
        reference: callable(batch) -> reference `PairLogps`; default: adapters disabled, or the
            precomputed cache when `cfg.precompute_reference`.
        batch_loss: callable(batch, progress) -> (loss, metrics); default from the stage.
        eval_hook: callable(model, processor, step) -> metrics, run every `cfg.eval_every` steps.
        method: what a `batch_loss` given here trains, in words (default: the stage and its loss terms).

    Returns:
        The run directory (config.yaml, metrics.jsonl, checkpoints/, adapter/ or model/).
    """
    procs = start_processes(cfg.parallel, cfg.dist_timeout_min)
    with folder_lock.run_folder(cfg.output_dir, procs):  # one run per folder: a second one is refused, naming this
        if finished_with_this_config(cfg, Path(cfg.output_dir)):  # rerunning a finished command changes nothing
            if procs.is_main:
                log.warning("%s holds this run, finished (summary.json): nothing to train; to train again, use "
                            "another output_dir", cfg.output_dir)
            return Path(cfg.output_dir)
        run = setup(cfg, procs, model, processor, reference, batch_loss, method)
        started = time.perf_counter()
        step, last_loss = loop(run, eval_hook)
        return finish(run, step, last_loss, time.perf_counter() - started)


def loop(run: Run, eval_hook: Callable | None = None) -> tuple[int, float | None]:
    """The training loop: for each optimizer step, accumulate micro-batches, clip, guard, step, log, evaluate,
    checkpoint. Returns (steps done, the last logged loss)."""
    cfg, procs, device, world = run.cfg, run.procs, run.device, run.procs.world
    step, total, last_loss = run.start_step, run.total_steps, None
    logger = MetricLogger(run.run_dir, cfg.report_to, enabled=procs.is_main, start_step=step,
                          project=cfg.tracker_project, run_name=cfg.run_name,
                          config={**to_dict(cfg), "data_facts": data_facts_of(run)})
    console = Console(f"train[{run.method.label}]", total, step, cfg.progress, procs.is_main)
    batches, stop = iter(run.loader), StopRequest(cfg.save_on_interrupt)
    run.model.train()
    # closing: a run that diverges or fails still ends its tracker runs (wandb, mlflow) and its progress bar
    with stop, contextlib.closing(console), contextlib.closing(logger):
        while step < total:
            # -- accumulate gradients over grad_accum micro-batches
            finite, synced = True, world == 1
            for micro in range(cfg.grad_accum):
                batch = next(batches).to(device)
                run.skips.note(batch.skipped)
                # Under DDP every rank must join each synchronised backward, so a batch whose records were all
                # skipped on one rank is skipped on all of them.
                if not all_ranks(bool(batch.ids), world, device):
                    continue
                last_micro = micro == cfg.grad_accum - 1
                # Gradients of the earlier micro-batches accumulate locally; the last one reduces the sum across ranks.
                with gradient_sync(run.step_module, procs, sync=last_micro), autocast(cfg.precision, device):
                    loss, metrics = run.batch_loss(batch, step / total)  # the step: forwards and the loss terms
                    # A non-finite loss still goes through backward, so no rank leaves the others waiting in the
                    # all-reduce; the update is skipped below on every rank alike.
                    (loss / cfg.grad_accum).backward()
                synced = synced or last_micro
                finite = all_ranks(finite and bool(torch.isfinite(loss)), world, device)
                if finite:  # the metrics of the whole micro-batch, all ranks together
                    logger.add(mean_over_ranks({"loss": loss.item(), **metrics}, procs), pairs=len(batch.ids) * world,
                               tokens=batch_tokens(batch) * world)
            if run.average_by_hand or (not synced and not procs.sharded):  # also when the last micro-batch was skipped
                average_gradients(run.params, world)

            # -- clip, guard, step
            grad_norm = guarded_update(run, finite, step)
            step += 1

            # -- log, evaluate, checkpoint
            # skipped_records here counts what this (the main) process saw; summary.json adds every rank's
            counters = {"skipped_records": run.skips.total(), "nonfinite_steps": run.nonfinite["nonfinite_steps"]}
            if step % cfg.log_every == 0 or step == total:
                row = logger.flush(step, {"lr": run.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                                          **counters})
                last_loss = row.get("loss", last_loss)
            console.update(step, last_loss)
            if eval_hook is not None and cfg.eval_every and step % cfg.eval_every == 0:
                evaluate(run, eval_hook, step, logger)
            # The last step is not checkpointed: the final adapter below is what a finished run keeps.
            # An interrupt (SIGINT / SIGTERM) is acted on here, between steps, by every rank at the same step.
            interrupted = stop.enabled and not all_ranks(stop.signum is None, world, device)
            if ((cfg.save_every and step % cfg.save_every == 0) or interrupted) and step < total:
                saved = checkpoint(run, step)
                if interrupted:
                    raise Interrupted(step, total, saved)
    return step, last_loss


def guarded_update(run: Run, finite: bool, step: int) -> torch.Tensor:
    """Clip the gradients and take the optimizer step, or skip it when the loss or the gradient norm is not finite
    (too many in a row: `TrainingDiverged`); the schedule steps either way. Returns the gradient norm."""
    cfg = run.cfg
    grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm or float("inf")))
    if finite and bool(torch.isfinite(grad_norm)):  # both already agreed by every rank
        run.optimizer.step()
        run.nonfinite["consecutive"] = 0
    else:
        run.nonfinite["nonfinite_steps"] += 1
        run.nonfinite["consecutive"] += 1
        log.warning("step %d: non-finite loss or gradient; update skipped", step + 1)
        if cfg.max_nonfinite_steps and run.nonfinite["consecutive"] >= cfg.max_nonfinite_steps:
            raise TrainingDiverged(diverged_message(run, step + 1, latest_checkpoint(run.run_dir)))
    # The schedule follows optimizer steps taken or skipped, so it ends where the config says it ends (torch
    # warns when the very first update was skipped; that order is intended here).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def evaluate(run: Run, eval_hook: Callable, step: int, logger: MetricLogger) -> None:
    """Run the eval hook on the policy and log what it returns. Under FSDP2 every rank runs it (a forward needs
    all the shards); the main one logs it."""
    if not (run.procs.is_main or run.procs.sharded):
        return
    run.model.eval()
    evaluated = eval_hook(run.model, run.processor, step)
    if evaluated:
        logger.flush(step, {f"eval/{k}": v for k, v in evaluated.items()})
    reshard(run.model, run.procs)
    run.model.train()


def checkpoint(run: Run, step: int) -> Path:
    """Save a resumable checkpoint at `step` (weights checked finite first); returns its folder."""
    check_finite_parameters(run.model, f"checkpoint at step {step}", run.procs)
    return save_checkpoint(run.run_dir, step, run.model, run.optimizer, run.scheduler, {
        "nonfinite": run.nonfinite, "skips": run.skips.state(),
        "loss_states": [getattr(t.loss, "state_dict", lambda: None)() for t in run.terms]}, run.procs,
        keep_last=run.cfg.save_total_limit)


def finish(run: Run, step: int, last_loss: float | None, train_s: float) -> Path:
    """After the last step: every rank's skips, the final weights (checked finite), summary.json, the model card."""
    procs, world = run.procs, run.procs.world
    run.skips.merge(gather_objects(run.skips.state(), world))
    check_finite_parameters(run.model, "final weights", procs)
    getattr(run.records, "wait", lambda: None)()  # a big file's background validation: a bad line fails the run here
    saved = save_final(run.model, run.processor, run.run_dir, procs)
    if procs.is_main:
        summary = {"steps": step, "final_loss": last_loss, "train_s": round(train_s, 3),
                   "skipped_records": run.skips.total(), "skipped_by_reason": run.skips.by_reason(),
                   "nonfinite_steps": run.nonfinite["nonfinite_steps"], "reference_prepass_s": run.prepass_s,
                   "processes": world, "parallel": "fsdp" if procs.sharded else "ddp" if world > 1 else "none"}
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_model_card(saved, run.cfg, summary, data_facts_of(run), run.method.description)
        warn_if_nothing_learned(run.run_dir)
    procs.barrier()
    return run.run_dir


def warn_if_nothing_learned(run_dir: Path) -> None:
    """A run whose every logged step had a zero gradient saved its starting weights: say so (PaMi with every bag
    left empty, a loss term that is constant for this data), rather than let it pass for a trained model."""
    norms = [row["grad_norm"] for row in read_metrics(run_dir) if "grad_norm" in row]
    if norms and not any(norms):
        log.warning("every logged step had a zero gradient (grad_norm 0): the saved weights are the starting ones; "
                    "see metrics.jsonl (e.g. pami/empty_fraction 1.0: every PaMi bag was left empty)")


def data_facts_of(run: Run) -> dict:
    """The data's facts for the trackers and the model card (the manifest's counts and skips)."""
    return data_facts(run.cfg.data.train, len(run.records), len(run.invalid))


# ----------------------------------------------------------------------------- what a run says

def on_terminal() -> bool:
    """Whether stderr is a terminal: a tqdm bar there redraws one line; in a piped log every redraw is a new line."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def run_label(cfg: TrainConfig) -> str:
    """What the run trains, for its bar and loss lines: the stage for SFT, else its loss terms ("pami+dpo")."""
    return "sft" if cfg.stage == "sft" else "+".join(t.name for t in cfg.loss)


class Console:
    """What a run shows as it goes: a tqdm bar on a terminal, else `LossLines` (main process only)."""

    def __init__(self, label: str, total: int, start: int, progress: bool, is_main: bool):
        self.bar = tqdm(total=total, initial=start, desc=label, disable=not (progress and is_main and on_terminal()))
        self.lines = LossLines(label, total, start, enabled=is_main and self.bar.disable)

    def update(self, step: int, loss: float | None) -> None:
        self.bar.update(1)
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")
        self.lines.maybe(step, loss)

    def close(self) -> None:
        self.bar.close()


class LossLines:
    """Periodic "train[dpo] step 20/200 (10%): loss 0.6612, 1.9 s/step" lines where no progress bar is drawn
    (piped output, progress=false): about every 5% of the steps, at least once a minute, and at the last one, so
    a log stays short and still shows a slow run moving."""

    EVERY_S = 60.0

    def __init__(self, label: str, total: int, start: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.every = max(1, total // 20)
        self.since, self.since_step = time.perf_counter(), start

    def maybe(self, step: int, loss: float | None) -> None:
        due = step % self.every == 0 or step == self.total or time.perf_counter() - self.since >= self.EVERY_S
        if not self.enabled or not due:
            return
        per_step = (time.perf_counter() - self.since) / max(step - self.since_step, 1)
        shown = "n/a" if loss is None else f"{loss:.4f}"
        log.info("%s step %d/%d (%d%%): loss %s, %.2f s/step", self.label, step, self.total,
                 100 * step // self.total, shown, per_step)
        self.since, self.since_step = time.perf_counter(), step


def note_epoch_remainder(n: int, batch_size: int, world: int, shuffle: bool) -> None:
    """Say once what an epoch leaves out: every micro-batch is full (so accumulation 1x8 equals 8x1 and resume is
    exact), so n % (batch_size * world) records sit out each epoch. TRL's DPOTrainer (transformers' Trainer,
    dataloader_drop_last=False) keeps them as a smaller last batch instead."""
    per = batch_size * world
    left = n % per if n >= per else 0
    if left:
        which = "different ones each epoch (reshuffled)" if shuffle else "the same last ones every epoch (shuffle off)"
        log.info("%d records at %d per step%s: %d steps per epoch use %d; %d sit out each epoch, %s; a batch_size "
                 "that divides %d uses them all", n, batch_size, f" x {world} processes" if world > 1 else "",
                 n // per, n - left, left, which, n)


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT / SIGTERM after saving a checkpoint; rerunning the same command resumes it."""

    def __init__(self, step: int, total: int, checkpoint: Path):
        super().__init__(f"stopped at step {step} of {total}; checkpoint saved to {checkpoint}: rerun the same "
                         "command to resume from it")
        self.step, self.checkpoint = step, checkpoint


class StopRequest:
    """SIGINT / SIGTERM handlers for the training loop: the first signal asks for a checkpoint after the current
    step (cluster schedulers send SIGTERM before preempting a job); a second one stops at once (KeyboardInterrupt).

    Only the main thread can install handlers; elsewhere (or with `enabled` false) signals act as usual.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mmpo: {signal.Signals(signum).name} received: saving a checkpoint after this step "
                  "(send it again to stop at once, without one)", file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class TrainingDiverged(RuntimeError):
    """Training stopped: too many consecutive optimizer steps had a non-finite loss or gradient."""


def diverged_message(run: Run, step: int, last_checkpoint) -> str:
    cfg = run.cfg
    betas = [t.loss.beta for t in run.terms if hasattr(t.loss, "beta")]  # the terms that ran (none for sft)
    cause = f"lr={cfg.lr}" + (f" or the loss's beta={betas}" if betas else "")
    kept = f"the last checkpoint ({last_checkpoint}) is untouched" if last_checkpoint else "nothing was saved"
    return (f"step {step}: {run.nonfinite['consecutive']} consecutive steps with a non-finite loss or gradient "
            f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); stopped. Likely cause: {cause} too large or too "
            f"small for this model, or fp16 overflow (precision={cfg.precision}); {kept}")


def check_finite_parameters(model, what: str, procs: Processes) -> None:
    """Refuse to save weights with NaN or inf in them (a run that saved them would look like it succeeded).

    Every rank checks its own shards and all decide together (under FSDP2 no rank holds all the weights).
    """
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(local_part(p)).all()]
    if not all_ranks(not bad, procs.world, procs.device):
        example = f" (e.g. {bad[0]})" if bad else ""
        raise TrainingDiverged(f"{what}: trainable tensors hold non-finite values{example}; not saved")


def save_final(model, processor, run_dir: Path, procs: Processes) -> Path:
    """The final adapter in PEFT format (`adapter/`), or the full model (`model/`), with the processor.

    Under FSDP2 the trainable weights are gathered to the main process first (a collective: every rank calls).
    """
    out = run_dir / ("adapter" if has_adapter(model) else "model")
    state = None
    if procs.sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # an adapter needs only the trainable weights (a 72B base would not fit the main process's memory)
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                     ignore_frozen_params=has_adapter(model)))
    if procs.is_main:
        write_pretrained(model, processor, out, state)
    return out


def write_pretrained(model, processor, folder: Path, state: dict | None = None) -> None:
    """`save_pretrained` of the model (with `state`, a gathered FSDP2 state dict, when given) and the processor, the
    files given the permissions the user's umask asks for."""
    model.save_pretrained(folder, **({"state_dict": state} if state is not None else {}))
    if processor is not None:
        processor.save_pretrained(folder)
    share_like_umask(folder)


def share_like_umask(folder: Path) -> None:
    """Give the saved files the permissions the user's umask asks for: safetensors writes weights 0600, so on a
    shared file system nobody else could read the adapter."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)
