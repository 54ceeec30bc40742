"""The training loop: DPO-family preference optimisation and SFT for LLaVA-style models.

One loop (`train`) reads top to bottom: set up, resume, then for each optimizer step accumulate
micro-batches, clip, guard against NaN, step, log, evaluate, checkpoint. What a step computes is a
`batch_loss` function chosen by the stage (`preference_step` for DPO variants, `sft_step` for SFT);
schedules (multi-round, distillation) call `train` with their own model, reference or batch_loss
instead of copying the loop.

The reference policy is the policy with its LoRA adapters disabled (never a second copy of the
weights), or log-probs precomputed once and cached next to the data (`precompute_reference`), or a
teacher passed in by the distillation schedule. Reference-free losses (SFT alone) skip it.
"""

from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mmpo import config as cfgmod
from mmpo import folder_lock
from mmpo import reference as ref
from mmpo.batches import PairBatch, PairCollator, SFTBatch, SFTCollator, SkipLedger, make_loader, read_records
from mmpo.checkpoint import check_rerun, latest_checkpoint, load_checkpoint, save_checkpoint
from mmpo.config import TrainConfig
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
from mmpo.logprobs import pair_logps, plain_logps
from mmpo.losses import LossInputs, build_loss_terms, requires_of, wpo_weight
from mmpo.metrics import MetricLogger, check_trackers
from mmpo.model_card import data_facts, write_model_card
from mmpo.models import load_model
from mmpo.models.loading import has_adapter, load_skeleton

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

    def forward(self, batch: PairBatch) -> dict:
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
    if cfg.optimizer != "adamw":
        raise cfgmod.ConfigError(f"optimizer: expected adamw | adamw_8bit, got {cfg.optimizer!r}")
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


def make_reference(cfg: TrainConfig, model, requires: set, records, collate, max_length: int, procs: Processes,
                   device):
    """The reference callable: the policy with adapters off, or (`precompute_reference`) its cached table."""
    if not cfg.precompute_reference:
        if not has_adapter(model):
            raise cfgmod.ConfigError("full fine-tuning (lora.enabled: false) has no adapter to disable for the "
                                     "reference: set precompute_reference: true")
        return ref.adapter_reference(model, requires, cfg.shared_prefix)
    cache = ref.cache_path(cfg, records.digest, requires, max_length, collate.media_root)
    table = ref.precompute_reference(ref.adapter_reference(model, requires, cfg.shared_prefix), records, collate,
                                     cfg.batch_size, cache, procs, device,
                                     context=lambda: autocast(cfg.precision, device))  # as the live reference runs
    return ref.cached_reference(table, device)


# ----------------------------------------------------------------------------- one step

def preference_step(batch: PairBatch, progress: float, *, policy, reference, terms,
                    requires: set) -> tuple[torch.Tensor, dict]:
    """The loss of one DPO-family micro-batch: policy log-probs -> reference log-probs -> weighted sum of terms.

    Args:
        batch: the micro-batch.
        progress: 0..1 through training (schedules inside losses, e.g. PaMi's close-to-far temperature).
        policy: `PolicyLogps` (possibly DDP-wrapped): every policy forward of the step in one call.
        reference: batch -> reference log-probs (adapters off, the cached table, or a teacher).
        terms: [(weight, loss)] from `build_loss_terms`.
        requires: what the terms need ("reference", "corrupt", "bag", "gt", "delta").

    Returns:
        (loss, metrics).
    """
    pol = policy(batch)
    ref = reference(batch) if "reference" in requires else {}
    # use_weighting: the policy pass also returned WPO's per-answer terms; their weight scales every term's pairs
    wpo = wpo_weight(pol["chosen_wpo"], pol["rejected_wpo"]) if "chosen_wpo" in pol else None
    pair_weight = batch.weight if wpo is None else batch.weight * wpo.to(batch.weight.dtype)
    inputs = LossInputs(
        policy_chosen=pol["chosen"], policy_rejected=pol["rejected"],
        ref_chosen=ref.get("chosen"), ref_rejected=ref.get("rejected"),
        chosen_tokens=pol["chosen_tokens"], rejected_tokens=pol["rejected_tokens"],
        weight=pair_weight, score_delta=batch.score_delta,
        policy_corrupt=pol.get("corrupt"), ref_corrupt=ref.get("corrupt"),
        bag_policy=pol.get("bag"), bag_ref=ref.get("bag"), bag_mask=batch.bag_mask,
        bag_distance=pol.get("bag_distance"),
        gt_logps=pol.get("gt"), gt_tokens=pol.get("gt_tokens"), progress=progress)
    total, metrics = 0.0, {}
    for weight, term in terms:
        value, term_metrics = term(inputs)
        total = total + weight * value
        metrics.update(term_metrics)
    if wpo is not None:
        metrics["wpo/weight"] = wpo.mean().item()
    metrics["logps/chosen"] = (pol["chosen"] / pol["chosen_tokens"].clamp(min=1)).mean().item()
    metrics["logps/rejected"] = (pol["rejected"] / pol["rejected_tokens"].clamp(min=1)).mean().item()
    return total, metrics


def sft_step(batch: SFTBatch, progress: float, *, policy) -> tuple[torch.Tensor, dict]:
    """The loss of one SFT micro-batch: token-averaged NLL of the answer (prompt and media tokens masked)."""
    logp, count = policy(batch)
    loss = -logp.sum() / count.sum().clamp(min=1)
    return loss, {"sft/nll": loss.item()}


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, model=None, processor=None, reference: Callable | None = None,
          batch_loss: Callable | None = None, eval_hook: Callable | None = None) -> Path:
    """Train a model as `cfg` says and write the run directory.

    Args:
        cfg: the resolved training config.
        model, processor: an already loaded policy (schedules pass merged models); loaded from
            `cfg.model` / `cfg.lora` when None.
        reference: callable(batch) -> reference log-probs; default: adapters disabled, or the
            precomputed cache when `cfg.precompute_reference`.
        batch_loss: callable(batch, progress) -> (loss, metrics); default from the stage.
        eval_hook: callable(model, processor, step) -> metrics, run every `cfg.eval_every` steps.

    Returns:
        The run directory (config.yaml, metrics.jsonl, checkpoints/, adapter/ or model/).
    """
    procs = start_processes(cfg.parallel, cfg.dist_timeout_min)
    with folder_lock.run_folder(cfg.output_dir, procs):  # one run per folder: a second one is refused, naming this
        return _train(cfg, procs, model, processor, reference, batch_loss, eval_hook)


def _train(cfg: TrainConfig, procs: Processes, model, processor, reference: Callable | None,
           batch_loss: Callable | None, eval_hook: Callable | None) -> Path:
    """`train`'s body, run while this process holds the run folder."""
    run_dir = Path(cfg.output_dir)
    is_main, world, rank = procs.is_main, procs.world, procs.rank
    check_rerun(cfg, run_dir, procs)  # and writes this run's config.yaml
    check_trackers(cfg.report_to)  # a missing tracker package stops every rank before any loading
    seed_everything(cfg.seed)  # the same fresh LoRA on every rank (a schedule's model is built alike everywhere)
    if cfg.deterministic:  # deterministic kernels, cuBLAS workspace, no cuDNN autotuning (README Reproducibility)
        make_deterministic()
    if is_main:  # run.json: what the numbers depend on besides config.yaml (versions, threads, switches)
        (run_dir / "run.json").write_text(json.dumps(environment(cfg.seed, cfg.deterministic), indent=1) + "\n")
    if model is None:
        model, processor = load_policy(cfg, procs)
    seed_everything(cfg.seed + rank)  # from here on, each rank its own stream (dropout)
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

    # Data: records are validated on read (file:line:field errors, or counted skips).
    sft = cfg.stage == "sft"
    media_root = resolve_media_root(cfg)
    if cfg.data.format != "mmpo":  # validated before step 1, each row converted when a batch reads it
        from mmpo.formats import read_source_records

        records, skipped = read_source_records(cfg.data.format, cfg.data.train, media_root, "sft" if sft else "pair",
                                               cfg.data.on_bad_record, cfg.data.media_root or None)
    else:
        records, skipped = read_records(cfg.data.train, media_root, "sft" if sft else "pair", cfg.data.on_bad_record)
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable records ({len(skipped)} skipped)")
    if len(records.media_types) > 1 and cfg.batch_size > 1:  # a shuffled mix would fail at a random step
        firsts = ", ".join(f"{kind}s from {where}" for kind, where in records.media_types.items())
        raise ValueError(f"{cfg.data.train} mixes media types ({firsts}), and a batch holds one type: split the file "
                         "by media_type (or train with batch_size: 1)")
    max_length = check_lengths(cfg, records, processor, media_root, model, is_main)
    terms = [] if sft else build_loss_terms([cfgmod.to_dict(t) for t in cfg.loss], "loss")
    requires = requires_of(terms)
    common = dict(processor=processor, media_root=media_root, num_frames=cfg.model.num_frames,
                  max_length=max_length, on_bad=cfg.data.on_bad_record)
    collate = SFTCollator(**common) if sft else PairCollator(**common, requires=frozenset(requires))
    per_epoch = max(len(records) // (cfg.batch_size * world), 1)
    total_steps = cfg.max_steps or max(int(cfg.epochs * per_epoch / cfg.grad_accum), 1)
    if is_main:
        note_epoch_remainder(len(records), cfg.batch_size, world, cfg.data.shuffle)

    # The step function, the reference, the optimizer: one forward per backward for DDP. Only the step module is
    # wrapped (DDP must wrap the module whose forward the step runs); the data order, the optimizer and the
    # schedule are the same code for 1 or N ranks, so resume and the batches a rank draws do not depend on it.
    policy_requires = requires | ({"wpo"} if cfg.use_weighting else set())  # WPO weights: policy pass only
    step_module = AnswerLogps(model) if sft else PolicyLogps(model, policy_requires, cfg.shared_prefix,
                                                             cfg.pami.js_top_k)
    # A schedule's own batch_loss calls the model directly, not through a DDP wrapper: its gradients are then
    # averaged by hand (FSDP2 needs neither: it hooks the model's own modules).
    average_by_hand = world > 1 and not procs.sharded and batch_loss is not None
    if average_by_hand:
        broadcast_from_main(model, procs)
    elif world > 1 and not procs.sharded:
        step_module = replicate(step_module, procs)
    prepass_s = 0.0  # seconds spent precomputing (or loading) reference log-probs before step 1
    if batch_loss is None and not sft and "reference" in requires and reference is None:
        started = time.perf_counter()
        reference = make_reference(cfg, model, requires, records, collate, max_length, procs, device)
        prepass_s = time.perf_counter() - started
    reshard(model, procs)
    if batch_loss is None:
        batch_loss = (functools.partial(sft_step, policy=step_module) if sft else
                      functools.partial(preference_step, policy=step_module, reference=reference, terms=terms,
                                        requires=requires))
    optimizer = make_optimizer(cfg, params)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio)

    # Resume: parameters, optimizer, scheduler, RNG, loss states, skipped records and the data position.
    step, nonfinite = 0, {"nonfinite_steps": 0, "consecutive": 0}
    skips = SkipLedger(invalid_lines=len(skipped))
    last = latest_checkpoint(run_dir)
    if last is not None:
        step, extra = load_checkpoint(last, model, optimizer, scheduler, procs)
        if "nonfinite" not in extra:
            raise ValueError(f"{last}: a checkpoint from an older mmpo, which this one cannot resume; use another "
                             "output_dir")
        nonfinite, skips = extra["nonfinite"], SkipLedger(len(skipped), extra["skips"])
        for (_, term), state in zip(terms, extra.get("loss_states", []), strict=True):
            if state is not None and hasattr(term, "load_state_dict"):
                term.load_state_dict(state)
        if is_main:
            log.info("resumed from %s at step %d", last, step)

    facts = data_facts(cfg.data.train, len(records), len(skipped))  # for the trackers and the model card
    logger = MetricLogger(run_dir, cfg.report_to, enabled=is_main, start_step=step, project=cfg.tracker_project,
                          run_name=cfg.run_name, config={**cfgmod.to_dict(cfg), "data_facts": facts})
    loader = make_loader(records, collate, cfg.batch_size, cfg.seed, step * cfg.grad_accum,
                         total_steps * cfg.grad_accum, cfg.data.shuffle, cfg.data.num_workers, world, rank)
    batches = iter(loader)
    label = f"train[{run_label(cfg)}]"
    bar = tqdm(total=total_steps, initial=step, desc=label, disable=not (cfg.progress and is_main and on_terminal()))
    lines = LossLines(label, total_steps, step, enabled=is_main and bar.disable)
    started, last_loss = time.perf_counter(), None
    stop = StopRequest(cfg.save_on_interrupt)
    model.train()
    with stop:
        while step < total_steps:
            # -- accumulate gradients over grad_accum micro-batches
            finite, synced = True, world == 1
            for micro in range(cfg.grad_accum):
                batch = next(batches).to(device)
                skips.note(batch.skipped)
                # Under DDP every rank must join each synchronised backward, so a batch whose records were all
                # skipped on one rank is skipped on all of them.
                if not all_ranks(bool(batch.ids), world, device):
                    continue
                last_micro = micro == cfg.grad_accum - 1
                # Gradients of the earlier micro-batches accumulate locally; the last one reduces the sum across ranks.
                with gradient_sync(step_module, procs, sync=last_micro), autocast(cfg.precision, device):
                    loss, metrics = batch_loss(batch, step / total_steps)
                    # A non-finite loss still goes through backward, so no rank leaves the others waiting in the
                    # all-reduce; the update is skipped below on every rank alike.
                    (loss / cfg.grad_accum).backward()
                synced = synced or last_micro
                finite = all_ranks(finite and bool(torch.isfinite(loss)), world, device)
                if finite:  # the metrics of the whole micro-batch, all ranks together
                    logger.add(mean_over_ranks({"loss": loss.item(), **metrics}, procs), pairs=len(batch.ids) * world,
                               tokens=batch_tokens(batch) * world)
            if average_by_hand or (not synced and not procs.sharded):  # also when the last micro-batch was skipped
                average_gradients(params, world)

            # -- clip, guard, step
            grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")))
            if finite and bool(torch.isfinite(grad_norm)):  # both already agreed by every rank
                optimizer.step()
                nonfinite["consecutive"] = 0
            else:
                nonfinite["nonfinite_steps"] += 1
                nonfinite["consecutive"] += 1
                log.warning("step %d: non-finite loss or gradient; update skipped", step + 1)
                if cfg.max_nonfinite_steps and nonfinite["consecutive"] >= cfg.max_nonfinite_steps:
                    raise TrainingDiverged(diverged_message(cfg, step + 1, nonfinite["consecutive"],
                                                            latest_checkpoint(run_dir)))
            # The schedule follows optimizer steps taken or skipped, so it ends where the config says it ends (torch
            # warns when the very first update was skipped; that order is intended here).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            # -- log, evaluate, checkpoint
            # skipped_records here counts what this (the main) process saw; summary.json adds every rank's
            counters = {"skipped_records": skips.total(), "nonfinite_steps": nonfinite["nonfinite_steps"]}
            if step % cfg.log_every == 0 or step == total_steps:
                row = logger.flush(step, {"lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm), **counters})
                last_loss = row.get("loss", last_loss)
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
            lines.maybe(step, last_loss)
            # Under FSDP2 every rank runs the hook (a forward needs all the shards); the main one logs it.
            if eval_hook is not None and cfg.eval_every and step % cfg.eval_every == 0 and (is_main or procs.sharded):
                model.eval()
                evaluated = eval_hook(model, processor, step)
                if evaluated:
                    logger.flush(step, {f"eval/{k}": v for k, v in evaluated.items()})
                reshard(model, procs)
                model.train()
            # The last step is not checkpointed: the final adapter below is what a finished run keeps.
            # An interrupt (SIGINT / SIGTERM) is acted on here, between steps, by every rank at the same step.
            interrupted = stop.enabled and not all_ranks(stop.signum is None, world, device)
            periodic = cfg.save_every and step % cfg.save_every == 0
            if (periodic or interrupted) and step < total_steps:
                check_finite_parameters(model, f"checkpoint at step {step}", procs)
                saved = save_checkpoint(run_dir, step, model, optimizer, scheduler, {
                    "nonfinite": nonfinite, "skips": skips.state(),
                    "loss_states": [getattr(t, "state_dict", lambda: None)() for _, t in terms]}, procs,
                    keep_last=cfg.save_total_limit)
                if interrupted:
                    bar.close()
                    logger.close()
                    raise Interrupted(step, total_steps, saved)
    bar.close()
    logger.close()
    skips.merge(gather_objects(skips.state(), world))
    check_finite_parameters(model, "final weights", procs)
    getattr(records, "wait", lambda: None)()  # a big file's background validation: a bad line fails the run here
    saved = save_final(model, processor, run_dir, procs)
    if is_main:
        summary = {"steps": step, "final_loss": last_loss, "train_s": round(time.perf_counter() - started, 3),
                   "skipped_records": skips.total(), "skipped_by_reason": skips.by_reason(),
                   "nonfinite_steps": nonfinite["nonfinite_steps"], "reference_prepass_s": prepass_s,
                   "processes": world, "parallel": "fsdp" if procs.sharded else "ddp" if world > 1 else "none"}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        write_model_card(saved, cfg, summary, facts)
    procs.barrier()
    return run_dir


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


def diverged_message(cfg: TrainConfig, step: int, count: int, last_checkpoint) -> str:
    betas = [t.params["beta"] for t in cfg.loss if "beta" in t.params]
    kept = f"the last checkpoint ({last_checkpoint}) is untouched" if last_checkpoint else "nothing was saved"
    return (f"step {step}: {count} consecutive steps with a non-finite loss or gradient (max_nonfinite_steps="
            f"{cfg.max_nonfinite_steps}); stopped. Likely cause: lr={cfg.lr} or the loss's beta={betas or 'default'} "
            f"too large or too small for this model, or fp16 overflow (precision={cfg.precision}); {kept}")


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
        model.save_pretrained(out, **({"state_dict": state} if state is not None else {}))
        if processor is not None:
            processor.save_pretrained(out)
        share_like_umask(out)
    return out


def share_like_umask(folder: Path) -> None:
    """Give the saved files the permissions the user's umask asks for: safetensors writes weights 0600, so on a
    shared file system nobody else could read the adapter."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)
