"""The training loop: DPO-family preference optimisation and SFT for LLaVA-style models.

One loop (`train`) reads top to bottom: set up, resume, then for each optimizer step accumulate
micro-batches, clip, guard against NaN, step, log, evaluate, checkpoint. What a step computes is a
`batch_loss` function chosen by the stage (`preference_loss` for DPO variants, `sft_loss` for SFT);
schedules (multi-round, distillation) call `train` with their own model, reference or batch_loss
instead of copying the loop.

The reference policy is the policy with its LoRA adapters disabled (never a second copy of the
weights), or log-probs precomputed once and cached next to the data (`precompute_reference`), or a
teacher passed in by the distillation schedule. Reference-free losses (SFT alone) skip it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from mmpo import config as cfgmod
from mmpo.batches import PairCollator, SFTCollator, SkipLedger, all_batches, make_loader, read_records
from mmpo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mmpo.config import TrainConfig
from mmpo.lengths import preflight, resolve_max_length, too_long_message
from mmpo.logprobs import packed_logps, plain_logps
from mmpo.losses import LossInputs, build_loss_terms, js_divergence, requires_of
from mmpo.metrics import MetricLogger
from mmpo.models import load_model, reference_mode
from mmpo.models.loading import fingerprint, has_adapter, model_fingerprint

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- forward passes

def to_device(obj, device):
    """Move every tensor in a nested dict/list to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj


def pair_logps(model, batch: dict, requires: set, shared_prefix: bool, js_logits: bool = False) -> dict:
    """All answer log-probs a step needs from one model (policy or reference).

    Returns a dict with `chosen`, `rejected`, `chosen_tokens`, `rejected_tokens` and, when required,
    `corrupt` (chosen answer under corrupted media), `bag` [B, K] (chosen answer under each augmented
    clip) and `gt`, `gt_tokens` (ground-truth answer). With `js_logits` (the policy's PaMi pass) also the
    detached answer logits on the original media (`js_base`) and on each bag clip (`js_bag`), so the
    prompt-aware distances need no forward of their own.
    """
    keep = js_logits and "bag" in requires
    extra = [batch["gt"]] if "gt" in requires else []
    if shared_prefix and "rejected_prompt" not in batch:
        # chosen, rejected (and gt) share the media and prompt: encode them once.
        outs = packed_logps(model, batch["prompt"], [batch["chosen"], batch["rejected"], *extra], keep_logits=keep)
    else:
        outs = [plain_logps(model, batch["prompt"], batch["chosen"], keep_logits=keep),
                plain_logps(model, batch.get("rejected_prompt", batch["prompt"]), batch["rejected"], keep_logits=keep)]
        outs += [plain_logps(model, batch["prompt"], a, keep_logits=keep) for a in extra]
    res = {"chosen": outs[0][0], "chosen_tokens": outs[0][1], "rejected": outs[1][0], "rejected_tokens": outs[1][1]}
    if "gt" in requires:
        res["gt"], res["gt_tokens"] = outs[2][:2]
    if "corrupt" in requires:
        res["corrupt"] = plain_logps(model, batch["corrupt_prompt"], batch["chosen"])[0]
    if "bag" in requires:
        bag = [plain_logps(model, p, batch["chosen"], keep_logits=keep) for p in batch["bag_prompts"]]
        res["bag"] = torch.stack([b[0] for b in bag], 1)
        if keep:
            res["js_base"] = outs[0][2].detach()
            res["js_bag"] = [b[2].detach() for b in bag]
    return res


class PolicyLogps(torch.nn.Module):
    """Wraps the policy so that one `forward` computes every log-prob of a step.

    DDP expects exactly one forward per backward; the shared-prefix, corrupt and bag passes are all
    inside this one call, so `accelerate` can wrap it for multi-GPU training unchanged.
    """

    def __init__(self, model, requires: set, shared_prefix: bool):
        super().__init__()
        self.model, self.requires, self.shared_prefix = model, requires, shared_prefix

    def forward(self, batch: dict) -> dict:
        return pair_logps(self.model, batch, self.requires, self.shared_prefix, js_logits=True)


class AnswerLogps(torch.nn.Module):
    """SFT's step module: summed answer log-probs and token counts of `batch["answer"]`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return plain_logps(self.model, batch["prompt"], batch["answer"])


class AdaptersOff:
    """Context manager factory: the policy's adapter layers disabled (the reference), found once.

    `PeftModel.disable_adapter()` walks every module and builds a model status report on each call:
    15 ms of a 120 ms step on the tiny CPU benchmark (benchmarks/LOG.md, 2026-11-23). The set of adapter
    layers is fixed during training, so they are collected once and toggled with the same per-layer
    call peft itself uses (`peft.tuners.tuners_utils.BaseTunerLayer.enable_adapters`, also on
    `modules_to_save` wrappers). Falls back to `reference_mode` for non-LoRA-style (prompt) adapters.
    """

    def __init__(self, model):
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        prompt_learning = any(c.is_prompt_learning or c.is_adaption_prompt for c in model.peft_config.values())
        self.fallback = prompt_learning or not self.layers

    @contextlib.contextmanager
    def __call__(self):
        if self.fallback:
            with reference_mode(self.model):
                yield
            return
        try:
            for m in self.layers:
                m.enable_adapters(False)
            yield
        finally:
            for m in self.layers:
                m.enable_adapters(True)


def adapter_reference(model, requires: set, shared_prefix: bool) -> Callable[[dict], dict]:
    """Reference = the same model with its adapters disabled, no grad.

    Without an adapter (full fine-tuning) this is only valid before the first update, i.e. for the
    precomputed-reference pass; `train` enforces that.
    """
    adapters_off = AdaptersOff(model) if has_adapter(model) else contextlib.nullcontext

    def reference(batch: dict) -> dict:
        with torch.no_grad(), adapters_off():
            return pair_logps(model, batch, requires, shared_prefix)
    return reference


@torch.no_grad()
def bag_distances(pol: dict, mask: torch.Tensor, top_k: int) -> torch.Tensor:
    """PaMi-VDPO prompt-aware distance d_k = mean_t JS(p(.|v) || p(.|v_k)) under the current policy.

    Computed from the policy's own logits of this step (detached), so it costs no extra forward.
    """
    return torch.stack([js_divergence(pol["js_base"], q, mask, top_k or None) for q in pol["js_bag"]], 1)


# ----------------------------------------------------------------------------- reference cache

def load_reference_cache(path: Path) -> dict[str, dict]:
    """The cached {record id: {name: tensor}}; anything but tensors and plain containers is refused.

    The cache sits next to the user's data, where anyone who can write a data file can write it too: a
    full unpickle would run whatever code such a file names.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refusing to load a reference cache that holds more than tensors "
                         f"(delete it to recompute): {str(exc).splitlines()[0]}") from None


def precompute_reference(reference: Callable, loader, cache_path: Path) -> dict[str, dict]:
    """One pass over the data under the reference; {record id: {name: value}} saved to `cache_path`."""
    if cache_path.is_file():
        return load_reference_cache(cache_path)
    table: dict[str, dict] = {}
    for batch in tqdm(loader, desc="reference log-probs", leave=False):
        if not batch["ids"]:
            continue
        out = reference(batch)
        for i, rid in enumerate(batch["ids"]):
            table[rid] = {k: v[i].detach().cpu() for k, v in out.items()}
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_suffix(".tmp")
    torch.save(table, tmp)
    tmp.replace(cache_path)
    return table


def cached_reference(table: dict[str, dict], device) -> Callable[[dict], dict]:
    def reference(batch: dict) -> dict:
        rows = [table[rid] for rid in batch["ids"]]
        return {k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0]}
    return reference


# ----------------------------------------------------------------------------- step losses

def preference_loss(terms, step_module, reference, requires: set, top_k: int = 0):
    """batch_loss for DPO-family stages: policy + reference log-probs -> weighted sum of loss terms."""
    def batch_loss(batch: dict, progress: float):
        pol = step_module(batch)
        ref = reference(batch) if "reference" in requires else {}
        inputs = LossInputs(
            policy_chosen=pol["chosen"], policy_rejected=pol["rejected"],
            ref_chosen=ref.get("chosen"), ref_rejected=ref.get("rejected"),
            chosen_tokens=pol["chosen_tokens"], rejected_tokens=pol["rejected_tokens"],
            weight=batch["weight"], score_delta=batch.get("score_delta"),
            policy_corrupt=pol.get("corrupt"), ref_corrupt=ref.get("corrupt"),
            bag_policy=pol.get("bag"), bag_ref=ref.get("bag"), bag_mask=batch.get("bag_mask"),
            bag_distance=bag_distances(pol, batch["chosen"]["attention_mask"], top_k) if "bag" in requires else None,
            gt_logps=pol.get("gt"), gt_tokens=pol.get("gt_tokens"), progress=progress)
        total, metrics = 0.0, {}
        for weight, term in terms:
            value, m = term(inputs)
            total = total + weight * value
            metrics.update(m)
        metrics["logps/chosen"] = (pol["chosen"] / pol["chosen_tokens"].clamp(min=1)).mean().item()
        metrics["logps/rejected"] = (pol["rejected"] / pol["rejected_tokens"].clamp(min=1)).mean().item()
        return total, metrics
    return batch_loss


def sft_loss(step_module):
    """batch_loss for SFT: token-averaged NLL of the answer (prompt and media tokens masked)."""
    def batch_loss(batch: dict, progress: float):
        logp, count = step_module(batch)
        loss = -logp.sum() / count.sum().clamp(min=1)
        return loss, {"sft/nll": loss.item()}
    return batch_loss


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
    """Linear warm-up then cosine decay to 0 (the schedule of TRL/LLaVA DPO scripts)."""
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

    return str(default_media_root(cfg.data.train, cfg.data.media_root))


def batch_tokens(batch: dict) -> int:
    n = int(batch["prompt"]["attention_mask"].sum())
    for key in ("chosen", "rejected", "answer"):
        if key in batch:
            n += int(batch[key]["attention_mask"].sum())
    return n


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
    from accelerate import Accelerator

    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    check_distributed(str(accelerator.distributed_type))
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    check_rerun(cfg, run_dir, is_main)
    accelerator.wait_for_everyone()  # every rank has compared with the old config before it is replaced
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfgmod.save(cfg, run_dir / "config.yaml")
    seed_everything(cfg.seed + rank)
    if model is None:
        model, processor = load_model(cfg.model, cfg.lora, trainable=True)
    device = next(model.parameters()).device
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    # Data: records are validated on read (file:line:field errors, or counted skips).
    sft = cfg.stage == "sft"
    media_root = resolve_media_root(cfg)
    records, skipped = read_records(cfg.data.train, media_root, "sft" if sft else "pair", cfg.data.on_bad_record)
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable records ({len(skipped)} skipped)")
    max_length = check_lengths(cfg, records, processor, media_root, model, is_main)
    terms = [] if sft else build_loss_terms([cfgmod.to_dict(t) for t in cfg.loss], "loss")
    requires = requires_of(terms)
    common = dict(processor=processor, media_root=media_root, num_frames=cfg.model.num_frames,
                  max_length=max_length, on_bad=cfg.data.on_bad_record)
    collate = SFTCollator(**common) if sft else PairCollator(**common, requires=frozenset(requires))
    per_epoch = max(len(records) // (cfg.batch_size * world), 1)
    total_steps = cfg.max_steps or max(int(cfg.epochs * per_epoch / cfg.grad_accum), 1)

    # The step function, the reference, the optimizer: one forward per backward for DDP.
    step_module = AnswerLogps(model) if sft else PolicyLogps(model, requires, cfg.shared_prefix)
    if world > 1:
        step_module = accelerator.prepare(step_module)
    prepass_s = 0.0  # seconds spent precomputing (or loading) reference log-probs before step 1
    if batch_loss is None and not sft and "reference" in requires and reference is None:
        if cfg.precompute_reference:
            key = fingerprint(records.digest, model_fingerprint(cfg.model), sorted(requires),  # digest: from the read
                              max_length, cfg.model.num_frames, cfg.shared_prefix)
            cache = Path(str(cfg.data.train) + ".refcache") / f"{key}.pt"
            started = time.perf_counter()
            table = None
            if is_main:  # one pass on the main process; the others wait for its file (no duplicate work or writes)
                table = precompute_reference(adapter_reference(model, requires, cfg.shared_prefix),
                                             all_batches(records, collate, cfg.batch_size), cache)
            accelerator.wait_for_everyone()
            reference = cached_reference(table if table is not None else load_reference_cache(cache), device)
            prepass_s = time.perf_counter() - started
        elif not has_adapter(model):
            raise cfgmod.ConfigError("full fine-tuning (lora.enabled: false) has no adapter to disable for the "
                                     "reference: set precompute_reference: true")
        else:
            reference = adapter_reference(model, requires, cfg.shared_prefix)
    if batch_loss is None:
        batch_loss = sft_loss(step_module) if sft else preference_loss(terms, step_module, reference, requires,
                                                                        cfg.pami.js_top_k)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    scheduler = warmup_cosine(optimizer, total_steps, cfg.warmup_ratio)

    # Resume: parameters, optimizer, scheduler, RNG, loss states, skipped records and the data position.
    step, nonfinite = 0, {"nonfinite_steps": 0, "consecutive": 0}
    skips = SkipLedger(invalid_lines=len(skipped))
    last = latest_checkpoint(run_dir)
    if last is not None:
        step, extra = load_checkpoint(last, model, optimizer, scheduler)
        nonfinite, skips = extra["nonfinite"], SkipLedger(len(skipped), extra["skips"])
        for (_, term), state in zip(terms, extra.get("loss_states", []), strict=True):
            if state is not None and hasattr(term, "load_state_dict"):
                term.load_state_dict(state)
        log.info("resumed from %s at step %d", last, step)

    logger = MetricLogger(run_dir, cfg.tensorboard, enabled=is_main, start_step=step)
    loader = make_loader(records, collate, cfg.batch_size, cfg.seed, step * cfg.grad_accum,
                         total_steps * cfg.grad_accum, cfg.data.shuffle, cfg.data.num_workers, world, rank)
    batches = iter(loader)
    bar = tqdm(total=total_steps, initial=step, desc=f"train[{cfg.stage}]", disable=not (cfg.progress and is_main))
    model.train()
    while step < total_steps:
        # -- accumulate gradients over grad_accum micro-batches
        finite, synced = True, world == 1
        for micro in range(cfg.grad_accum):
            batch = to_device(next(batches), device)
            skips.note(batch["skipped"])
            # Under DDP every rank must join each synchronised backward, so a batch whose records were all
            # skipped on one rank is skipped on all of them.
            if not all_ranks(bool(batch["ids"]), world, device):
                continue
            last_micro = micro == cfg.grad_accum - 1
            # no_sync: gradients of the earlier micro-batches accumulate locally; the last one all-reduces the sum.
            with (contextlib.nullcontext() if last_micro or world == 1 else accelerator.no_sync(step_module)), \
                    autocast(cfg.precision, device):
                loss, metrics = batch_loss(batch, step / total_steps)
                # A non-finite loss still goes through backward, so no rank leaves the others waiting in the
                # all-reduce; the update is skipped below on every rank alike.
                (loss / cfg.grad_accum).backward()
            synced = synced or last_micro
            if torch.isfinite(loss):
                logger.add({"loss": loss.item(), **metrics}, pairs=len(batch["ids"]), tokens=batch_tokens(batch))
            else:
                finite = False
        if not synced:  # the last micro-batch was skipped everywhere: average the accumulated gradients by hand
            average_gradients(params, world)

        # -- clip, guard, step
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
        if all_ranks(finite and bool(torch.isfinite(grad_norm)), world, device):
            optimizer.step()
            nonfinite["consecutive"] = 0
        else:
            nonfinite["nonfinite_steps"] += 1
            nonfinite["consecutive"] += 1
            log.warning("step %d: non-finite loss or gradient; update skipped", step + 1)
            if cfg.max_nonfinite_steps and nonfinite["consecutive"] >= cfg.max_nonfinite_steps:
                raise TrainingDiverged(diverged_message(cfg, step + 1, nonfinite["consecutive"], last))
        # The schedule follows optimizer steps taken or skipped, so it ends where the config says it ends (torch
        # warns when the very first update was skipped; that order is intended here).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)

        # -- log, evaluate, checkpoint
        counters = {"skipped_records": skips.total(), "nonfinite_steps": nonfinite["nonfinite_steps"]}
        if step % cfg.log_every == 0 or step == total_steps:
            row = logger.flush(step, {"lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm), **counters})
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
        if eval_hook is not None and cfg.eval_every and step % cfg.eval_every == 0 and is_main:
            model.eval()
            logger.flush(step, {f"eval/{k}": v for k, v in eval_hook(model, processor, step).items()})
            model.train()
        # The last step is not checkpointed: the final adapter below is what a finished run keeps.
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps and is_main:
            check_finite_parameters(model, f"checkpoint at step {step}")
            save_checkpoint(run_dir, step, model, optimizer, scheduler, {
                "nonfinite": nonfinite, "skips": skips.state(),
                "loss_states": [getattr(t, "state_dict", lambda: None)() for _, t in terms]})
        accelerator.wait_for_everyone()
    bar.close()
    logger.close()
    skips.merge(gather_objects(skips.state(), world))
    if is_main:
        check_finite_parameters(model, "final weights")
        save_final(model, processor, run_dir)
        summary = {"steps": step, "skipped_records": skips.total(), "skipped_by_reason": skips.by_reason(),
                   "nonfinite_steps": nonfinite["nonfinite_steps"], "reference_prepass_s": prepass_s}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return run_dir


def check_lengths(cfg: TrainConfig, records, processor, media_root, model, is_main: bool) -> int:
    """Resolve `data.max_length` (0 = the model's context) and measure the data against it before step 1.

    With `on_bad_record: error`, a record over the limit stops the run here, naming its file and line and
    the key to change, instead of mid-run; with `skip` the collator leaves such records out (counted), unless
    every record is too long (nothing would train).
    """
    limit = resolve_max_length(cfg.data.max_length, model)
    report = preflight(records, processor, media_root, cfg.model.num_frames, limit, seed=cfg.seed)
    if is_main:
        log.info(report.summary())
    if report.over and (cfg.data.on_bad_record == "error" or len(report.over) == report.checked):
        rec, length = report.over[0]
        raise ValueError(f"{too_long_message(rec, length, limit)}; {len(report.over)} of {report.checked} "
                         "checked records are too long")
    return limit


class TrainingDiverged(RuntimeError):
    """Training stopped: too many consecutive optimizer steps had a non-finite loss or gradient."""


def diverged_message(cfg: TrainConfig, step: int, count: int, last_checkpoint) -> str:
    betas = [t.params["beta"] for t in cfg.loss if "beta" in t.params]
    kept = f"the last checkpoint ({last_checkpoint}) is untouched" if last_checkpoint else "nothing was saved"
    return (f"step {step}: {count} consecutive steps with a non-finite loss or gradient (max_nonfinite_steps="
            f"{cfg.max_nonfinite_steps}); stopped. Likely cause: lr={cfg.lr} or the loss's beta={betas or 'default'} "
            f"too large or too small for this model, or fp16 overflow (precision={cfg.precision}); {kept}")


def check_finite_parameters(model, what: str) -> None:
    """Refuse to save weights with NaN or inf in them (a run that saved them would look like it succeeded)."""
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        raise TrainingDiverged(f"{what}: {len(bad)} trainable tensors hold non-finite values (e.g. {bad[0]}); "
                               "not saved")


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


def check_rerun(cfg: TrainConfig, run_dir: Path, is_main: bool = True) -> None:
    """Refuse to resume (or overwrite) a run folder whose saved config differs from this one.

    A rerun into a run's folder resumes from its last checkpoint; with another lr, loss or data it would mix
    two runs and rewrite config.yaml with values that never ran. Settings that do not change what is computed
    (RERUN_EXEMPT) may differ; `allow_config_change=true` accepts the rest (the old config is kept).
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file() or not has_results(run_dir):
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    now = _flatten(cfgmod.to_dict(cfg))
    changed = sorted(k for k in saved.keys() | now.keys()
                     if saved.get(k) != now.get(k) and k.split(".")[0] not in RERUN_EXEMPT and k not in RERUN_EXEMPT)
    if not changed:
        return
    listing = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
    if not cfg.allow_config_change:
        raise cfgmod.ConfigError(f"{run_dir} holds a run made with another config ({listing}); use another "
                                 "output_dir, or allow_config_change=true to continue it with the new values")
    if is_main:
        keep = run_dir / f"config.before-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        saved_path.replace(keep)
        log.warning("%s: continuing with a changed config (%s); the old one is in %s", run_dir, listing, keep.name)


def has_results(run_dir: Path) -> bool:
    """A run folder holds work a rerun would continue or replace: a checkpoint or a finished run, in it or in
    a sub-run (a schedule's rounds and stages)."""
    return any(run_dir.glob("**/checkpoints/latest")) or any(run_dir.glob("**/summary.json"))


# Settings that never change what a run computes (display, logging, checkpoint cadence, worker count).
RERUN_EXEMPT = {"progress", "log_every", "save_every", "eval_every", "tensorboard", "data.num_workers",
                "allow_config_change", "output_dir"}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and k != "params" else {key: v})
    return out


def check_distributed(kind: str) -> None:
    """One process or DDP only. Under FSDP / DeepSpeed the LoRA weights and optimizer states are sharded, and
    the adapter saving, checkpoints and adapter-off reference here do not gather them (never run: no GPUs)."""
    if kind.split(".")[-1] in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise cfgmod.ConfigError(f"accelerate {kind}: mmpo trains in one process or with DDP "
                                 "(configs/accelerate/ddp.yaml); LoRA on a 7B model fits one GPU per process")


def save_final(model, processor, run_dir: Path) -> Path:
    """The final adapter in PEFT format (`adapter/`), or the full model (`model/`), with the processor."""
    out = run_dir / ("adapter" if has_adapter(model) else "model")
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    return out
