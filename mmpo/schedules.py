"""Training schedules that wrap the one loop in `mmpo.trainer.train`: multi-round DPO and distillation.

Multi-round DPO (mrDPO, arXiv 2410.06682; code bytedance/video-SALMONN-2; METHODS.md §4), per round r:

    merge the LoRA into the weights -> attach a fresh LoRA (zero effect at the start)
    -> reference = adapters disabled = the merged policy of round r-1
    -> sample answers on-policy, score them against the ground truth, best vs worst -> round-r/pairs.jsonl
    -> train `steps_per_round` steps on cfg.loss + gt_weight * NLL(ground truth)  ("gdpo")

Each round is its own run directory (`round-r/`, with checkpoints), so a killed run resumes inside the
round it was in: finished rounds are the ones with `round-r/summary.json` (written after the adapter),
and the model at the start of round r is rebuilt by merging the adapters of rounds 1..r-1, in order,
into the base. Rebirth tuning then SFTs the pre-DPO model on the final model's greedy answers.

Distillation (LLaVA-MoD, arXiv 2408.15881; code shufangxun/LLaVA-MoD; METHODS.md §5, §6.5):
mimic stage (token-level forward KL(p_T || p_S) on answer tokens, `mimic/`), then preference stage
with the TEACHER as the reference (`preference/`): dpo | kto_pair | dpkd.

Run layout:
    output_dir/config.yaml, round-1/{pairs.jsonl, manifest.json, adapter/, checkpoints/, ...}, ...,
    model/ (merged final model), rebirth/{sft.jsonl, adapter/}; distillation: mimic/, preference/.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from mmpo import config as cfgmod
from mmpo.config import ConfigError, LossTerm, ModelConfig, TrainConfig
from mmpo.logprobs import answer_logits
from mmpo.media import load_media
from mmpo.models import add_lora, generate_answers, has_adapter, load_model
from mmpo.records import PairRecord, SFTRecord, default_media_root, pair_id, read_sft, write_jsonl, write_manifest
from mmpo.trainer import pair_logps, resolve_media_root, train

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- answer scorers

def _words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation (SQuAD-style normalisation, minus article removal)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def exact_score(answer: str, record: SFTRecord) -> float:
    """1.0 if the answer's words equal the ground truth's (case and punctuation ignored), else 0.0."""
    return float(_words(answer) == _words(record.answer))


def token_f1_score(answer: str, record: SFTRecord) -> float:
    """Word-overlap F1 between answer and ground truth (the SQuAD v1.1 evaluate.py F1)."""
    pred, gold = _words(answer), _words(record.answer)
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold or common == 0:
        return float(pred == gold)
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


# name -> fn(answer, sft_record) -> score (higher is better). The demo adds its own world scorer here, or
# passes a callable to `run_multi_round(scorer=...)`.
SCORERS: dict[str, Callable[[str, SFTRecord], float]] = {"exact": exact_score, "token_f1": token_f1_score}


# ----------------------------------------------------------------------------- shared helpers

def _derived(cfg: TrainConfig, **changes) -> TrainConfig:
    """A deep copy of `cfg` with top-level fields replaced (and `data.*` via `data_*` keys)."""
    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        if key.startswith("data_"):
            setattr(out.data, key[5:], value)
        else:
            setattr(out, key, value)
    return out


def _done(run_dir: Path) -> bool:
    """A `train` run is finished once summary.json exists (it is written after the final adapter/model)."""
    return (run_dir / "summary.json").is_file()


def _is_main() -> bool:
    """Rank 0 (or a single process): the one that writes shared files under `accelerate launch`."""
    return int(os.environ.get("RANK", "0")) == 0


def _write_atomic(path: Path, records: list) -> None:
    """Write a JSONL file under a temporary name and rename it, so an existing file is always complete.

    The temporary name is per process: under `accelerate launch` every rank generates the same pairs
    (same seed, same model) and may write them; each rename is atomic, so readers never see half a file.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write_jsonl(tmp, records)
    os.replace(tmp, path)


def load_merged(model_cfg: ModelConfig, adapters: list[Path] = ()):
    """Load `model_cfg` (its own adapter merged in), then merge `adapters` one after another.

    Args:
        model_cfg: the base model (path, optional adapter, dtype, device, 4-bit).
        adapters: PEFT adapter folders merged in order (rounds 1..r-1 of a multi-round run).

    Returns:
        (plain frozen model in eval mode, processor).
    """
    from peft import PeftModel

    model, processor = load_model(model_cfg, None, trainable=False)
    if has_adapter(model):
        model = model.merge_and_unload()
    for folder in adapters:
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    model.requires_grad_(False)
    return model.eval(), processor


def _fresh_lora(model, cfg: TrainConfig, salt: int):
    """Attach a new LoRA (lora_B = 0, so no effect yet); lora_A init seeded for reproducible reruns."""
    torch.manual_seed(cfg.seed * 1_000_003 + salt)
    return add_lora(model, cfg.lora)


def _batches(records: list, size: int):
    """Consecutive groups of `size` records that share a media type (processors cannot mix them)."""
    group: list = []
    for rec in records:
        if group and (len(group) == size or group[0].media_type != rec.media_type):
            yield group
            group = []
        group.append(rec)
    if group:
        yield group


def generate_for(model, processor, records: list[SFTRecord], media_root: str, num_frames: int, *, batch_size: int,
                 num_samples: int, temperature: float, max_new_tokens: int, seed: int) -> list[list[str]]:
    """Answers for every SFT record's (media, prompt); batch b is seeded with `seed + b`.

    Returns:
        One list of `num_samples` answers per record, in record order.
    """
    model.eval()
    out: list[list[str]] = []
    for b, group in enumerate(_batches(records, batch_size)):
        media = [load_media(media_root, r.media, r.media_type, num_frames) for r in group]
        out += generate_answers(model, processor, [r.prompt for r in group], media, group[0].media_type,
                                num_samples=num_samples, temperature=temperature,
                                max_new_tokens=max_new_tokens, seed=seed + b)
    return out


# ----------------------------------------------------------------------------- multi-round DPO

def rank_pair(record: SFTRecord, samples: list[str], scorer: Callable, min_gap: float,
              gt_fallback: bool) -> PairRecord | None:
    """Best-vs-worst pair from scored samples, or None when the score gap is not above `min_gap`.

    The sampling count and gap rule are the RECONSTRUCTION of METHODS.md §4 step 3. When `gt_fallback`
    and no sample scores as well as the ground-truth answer itself, the ground truth is the chosen
    answer (an off-policy positive, like Reg-DPO's GT-pairs, METHODS §6.4) so that a weak model whose
    samples are all wrong still gets pairs; `meta["chosen_is_gt"]` records which case it was.
    """
    samples = [s for s in samples if s.strip()]  # an empty answer is not a valid pair side
    if not samples:
        return None
    scores = [float(scorer(s, record)) for s in samples]
    best, worst = max(range(len(samples)), key=scores.__getitem__), min(range(len(samples)), key=scores.__getitem__)
    chosen, chosen_score, is_gt = samples[best], scores[best], False
    gt_score = float(scorer(record.answer, record))
    if gt_fallback and chosen_score < gt_score:
        chosen, chosen_score, is_gt = record.answer, gt_score, True
    rejected, gap = samples[worst], chosen_score - scores[worst]
    if gap <= min_gap or chosen == rejected:
        return None
    return PairRecord(id=pair_id(record.media, record.prompt, chosen, rejected), media=record.media,
                      media_type=record.media_type, prompt=record.prompt, chosen=chosen, rejected=rejected,
                      scores={"chosen": chosen_score, "rejected": scores[worst], "delta": gap},
                      source="multi_round", meta={"gt": record.answer, "sft_id": record.id, "chosen_is_gt": is_gt})


def unique_pairs(pairs: list[PairRecord]) -> list[PairRecord]:
    """The pairs with each id once (first kept).

    An SFT file may repeat a sample (the demo world asks some questions twice), and its repeats can rank to
    the very same pair; pair files must have unique ids (the reference cache is keyed by them), so a repeat
    adds nothing but a read error.
    """
    seen: set[str] = set()
    out = []
    for pair in pairs:
        if pair.id not in seen:
            seen.add(pair.id)
            out.append(pair)
    if len(out) < len(pairs):
        log.info("dropped %d repeated pairs (repeated SFT samples gave the same pair)", len(pairs) - len(out))
    return out


def round_pairs(model, processor, cfg: TrainConfig, records: list[SFTRecord], round_no: int, scorer: Callable,
                path: Path) -> Path:
    """On-policy pairs of one round, written atomically to `path` (reused if it exists).

    Args:
        model: the merged policy at the start of the round (plain, no fresh LoRA yet).
        processor: its processor.
        cfg: the multi-round config (multi_round.*, seed, batch_size, model.num_frames).
        records: the SFT records (answer = ground truth).
        round_no: 1-based round; sampling is seeded by (seed, round) so a rerun gives the same pairs.
        scorer: fn(answer, record) -> score.
        path: the round's pairs.jsonl.

    Returns:
        `path`.
    """
    if path.is_file():
        return path
    mr = cfg.multi_round
    samples = generate_for(model, processor, records, resolve_media_root(cfg), cfg.model.num_frames,
                           batch_size=cfg.batch_size, num_samples=mr.num_samples, temperature=mr.temperature,
                           max_new_tokens=mr.max_new_tokens, seed=cfg.seed * 1_000_003 + 10_007 * round_no)
    pairs = unique_pairs([p for rec, s in zip(records, samples)
                          if (p := rank_pair(rec, s, scorer, mr.min_gap, mr.gt_fallback)) is not None])
    if not pairs:
        raise ValueError(f"round {round_no}: no pair had a score gap above multi_round.min_gap={mr.min_gap} "
                         f"({len(records)} prompts, {mr.num_samples} samples each); "
                         "lower min_gap or enable gt_fallback")
    path.parent.mkdir(parents=True, exist_ok=True)
    if _is_main():
        write_manifest(path.parent, {"prompts": len(records), "pairs": len(pairs),
                                     "chosen_is_gt": sum(p.meta["chosen_is_gt"] for p in pairs)},
                       cfgmod.to_dict(mr), cfg.seed, media_root=resolve_media_root(cfg), round=round_no)
    _write_atomic(path, pairs)
    return path


def round_config(cfg: TrainConfig, round_dir: Path, pairs: Path) -> TrainConfig:
    """The config of one round: stage dpo on the round's pairs, cfg.loss + the ground-truth NLL term."""
    loss = list(copy.deepcopy(cfg.loss))
    if cfg.multi_round.gt_weight > 0:  # mrDPO gdpo: CE on gt_input_ids with weight 0.1 (METHODS §4 step 4)
        loss.append(LossTerm(name="sft", weight=cfg.multi_round.gt_weight, params={"target": "gt"}))
    return _derived(cfg, stage="dpo", output_dir=str(round_dir), max_steps=cfg.multi_round.steps_per_round,
                    loss=loss, data_train=str(pairs), data_media_root=resolve_media_root(cfg))


def _check_multi_round(cfg: TrainConfig) -> None:
    mr = cfg.multi_round
    if not cfg.lora.enabled:
        raise ConfigError("stage multi_round merges a LoRA each round: set lora.enabled: true")
    if mr.num_rounds < 1 or mr.steps_per_round < 1 or mr.num_samples < 1:
        raise ConfigError("multi_round: num_rounds, steps_per_round and num_samples must be >= 1")


def _resolve_scorer(cfg: TrainConfig, scorer: Callable | None) -> Callable:
    if scorer is not None:
        return scorer
    if cfg.multi_round.scorer not in SCORERS:
        raise ConfigError(f"multi_round.scorer: unknown scorer {cfg.multi_round.scorer!r}; "
                          f"valid: {sorted(SCORERS)} (or pass a callable)")
    return SCORERS[cfg.multi_round.scorer]


def run_multi_round(cfg: TrainConfig, scorer: Callable | None = None, eval_hook: Callable | None = None,
                    round_hook: Callable | None = None) -> Path:
    """Multi-round DPO with ground-truth guidance and optional rebirth tuning; resumable at any point.

    Args:
        cfg: stage multi_round; data.train is an SFT JSONL whose answers are the ground truth.
        scorer: fn(answer, sft_record) -> score, overriding `multi_round.scorer` (a SCORERS name).
        eval_hook: passed to every round's `train` (fn(model, processor, step) -> metrics).
        round_hook: fn(round, model, processor), called when a round's fresh LoRA is attached (tests).

    Returns:
        The run directory: round-r/ per round, model/ (merged final model), rebirth/ if enabled.
    """
    _check_multi_round(cfg)
    score = _resolve_scorer(cfg, scorer)
    out, mr = Path(cfg.output_dir), cfg.multi_round
    out.mkdir(parents=True, exist_ok=True)
    cfgmod.save(cfg, out / "config.yaml")
    records = read_sft(cfg.data.train, resolve_media_root(cfg))
    rounds = [out / f"round-{r}" for r in range(1, mr.num_rounds + 1)]
    start = next((i for i, d in enumerate(rounds) if not _done(d)), len(rounds))
    merged_saved = not mr.save_merged or (out / "model" / "config.json").is_file()
    if start == len(rounds) and merged_saved and (not mr.rebirth or _done(out / "rebirth")):
        return out  # everything finished before
    # State at the start of the first unfinished round: the base with finished rounds merged in order.
    model, processor = load_merged(cfg.model, [d / "adapter" for d in rounds[:start]])
    policy = None
    for i in range(start, len(rounds)):
        pairs = round_pairs(model, processor, cfg, records, i + 1, score, rounds[i] / "pairs.jsonl")
        policy = _fresh_lora(model, cfg, salt=i + 1)
        if round_hook is not None:
            round_hook(i + 1, policy, processor)
        train(round_config(cfg, rounds[i], pairs), model=policy, processor=processor, eval_hook=eval_hook)
        model = policy.merge_and_unload()  # the next round's reference
        model.requires_grad_(False)
    if not merged_saved and _is_main():
        model.save_pretrained(out / "model")
        processor.save_pretrained(out / "model")
    if mr.rebirth and not _done(out / "rebirth"):
        data = rebirth_data(cfg, model, processor, records)
        del model, policy  # free the final model before the pre-DPO one is loaded
        rebirth(cfg, data)
    return out


def rebirth_data(cfg: TrainConfig, final_model, processor, records: list[SFTRecord]) -> Path:
    """The final model's greedy answers to every training prompt, as `rebirth/sft.jsonl` (reused if present).

    Greedy decoding, as the published caption evaluation; empty answers are left out.
    """
    data = Path(cfg.output_dir) / "rebirth" / "sft.jsonl"
    if data.is_file():
        return data
    answers = generate_for(final_model, processor, records, resolve_media_root(cfg), cfg.model.num_frames,
                           batch_size=cfg.batch_size, num_samples=1, temperature=0.0,
                           max_new_tokens=cfg.multi_round.max_new_tokens, seed=cfg.seed)
    sft = [SFTRecord(r.id, r.media, r.media_type, r.prompt, a[0], {"gt": r.answer})
           for r, a in zip(records, answers) if a[0].strip()]
    if not sft:
        raise ValueError("rebirth: the final model gave only empty answers")
    data.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(data, sft)
    return data


def rebirth(cfg: TrainConfig, data: Path) -> Path:
    """Rebirth tuning (mrDPO, arXiv 2410.06682 v1): SFT the pre-DPO model on the final model's answers.

    A fresh LoRA on the original base (cfg.model, its adapter merged) is trained on `data`
    (`rebirth_data`) for `multi_round.rebirth_steps` steps into `rebirth/`. The paper mixes these
    captions with the model's other SFT data; here that mixing is left to the caller (concatenate files).

    Returns:
        The rebirth run directory.
    """
    base, processor = load_merged(cfg.model)
    rcfg = _derived(cfg, stage="sft", output_dir=str(Path(cfg.output_dir) / "rebirth"),
                    max_steps=cfg.multi_round.rebirth_steps, data_train=str(data),
                    data_media_root=resolve_media_root(cfg))
    return train(rcfg, model=_fresh_lora(base, cfg, salt=0), processor=processor)


# ----------------------------------------------------------------------------- distillation

def check_vocab(student: ModelConfig, teacher: ModelConfig) -> None:
    """Raise ConfigError unless both tokenizers have the same vocabulary (token -> id)."""
    from transformers import AutoTokenizer

    def vocab(m: ModelConfig) -> dict:
        return AutoTokenizer.from_pretrained(m.path, local_files_only=True,
                                             trust_remote_code=m.trust_remote_code).get_vocab()

    a, b = vocab(student), vocab(teacher)
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=str)[:3]
        raise ConfigError(f"distillation needs one vocabulary: student {student.path!r} ({len(a)} tokens) and "
                          f"teacher {teacher.path!r} ({len(b)} tokens) differ, e.g. {diff}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _shared_vocab(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    """Cut both to the common vocabulary size (padded embedding rows; LLaVA-MoD truncates the same way)."""
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :v].float(), teacher_logits[..., :v].float()


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p_T || p_S) = sum_v p_T (log p_T - log p_S), [B, T] (LLaVA-MoD only_kd, minus H(p_T))."""
    s, t = _shared_vocab(student_logits, teacher_logits)
    log_t = F.log_softmax(t, -1)
    return (log_t.exp() * (log_t - F.log_softmax(s, -1))).sum(-1)


def mimic_loss(student, teacher, nll_weight: float) -> Callable:
    """batch_loss for the mimic stage on SFT batches: mean answer-token KL (+ nll_weight * student NLL).

    METHODS.md §5 (shufangxun/LLaVA-MoD align_trainer.py): response tokens only, no temperature;
    `kd_lm` adds the student's cross-entropy on the labels.
    """
    def batch_loss(batch: dict, progress: float):
        mask = batch["answer"]["attention_mask"]
        s_logits = answer_logits(student, batch["prompt"], batch["answer"])
        with torch.no_grad():
            t_logits = answer_logits(teacher, batch["prompt"], batch["answer"])
        kl = _masked_mean(forward_kl(s_logits, t_logits), mask)
        loss, metrics = kl, {"mimic/kl": kl.item()}
        if nll_weight:
            logp = F.log_softmax(s_logits.float(), -1).gather(-1, batch["answer"]["input_ids"].unsqueeze(-1))
            nll = -_masked_mean(logp.squeeze(-1), mask)
            loss, metrics["mimic/nll"] = loss + nll_weight * nll, nll.item()
        return loss, metrics
    return batch_loss


def teacher_reference(teacher, requires: set, shared_prefix: bool) -> Callable[[dict], dict]:
    """The reference callable for preference distillation: pair log-probs under the teacher, no grad."""
    def reference(batch: dict) -> dict:
        with torch.no_grad():
            return pair_logps(teacher, batch, requires, shared_prefix)
    return reference


def dpkd_loss(student, teacher, beta: float, kd_ratio: float) -> Callable:
    """batch_loss for DPKD (arXiv 2406.19774; microsoft/LMOps dpkd; METHODS.md §6.5) on the chosen answer.

    Teacher forcing on the gold response y (here the pair's chosen answer): at each answer position,
    y_t = argmax p_T, y_s = argmax p_S, h_t = [log pS(y_t) - log pS(y_s)] - [log pT(y_t) - log pT(y_s)],
    L_DPKD = mean_t LS(beta h_t); total = (1 - k) * CE(y) + k * L_DPKD (the lm_coef pre-training term is
    not used).
    """
    def batch_loss(batch: dict, progress: float):
        gold, mask = batch["chosen"]["input_ids"], batch["chosen"]["attention_mask"]
        s_logits = answer_logits(student, batch["prompt"], batch["chosen"])
        with torch.no_grad():
            t_logits = answer_logits(teacher, batch["prompt"], batch["chosen"])
        s, t = _shared_vocab(s_logits, t_logits)
        log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
        y_t, y_s = log_t.argmax(-1, keepdim=True), log_s.detach().argmax(-1, keepdim=True)
        h = (log_s.gather(-1, y_t) - log_s.gather(-1, y_s) - log_t.gather(-1, y_t) + log_t.gather(-1, y_s)).squeeze(-1)
        l_dpkd = _masked_mean(-F.logsigmoid(beta * h), mask)
        ce = -_masked_mean(log_s.gather(-1, gold.unsqueeze(-1)).squeeze(-1), mask)
        loss = (1 - kd_ratio) * ce + kd_ratio * l_dpkd
        return loss, {"dpkd/loss": l_dpkd.item(), "dpkd/ce": ce.item(), "dpkd/margin": _masked_mean(h, mask).item()}
    return batch_loss


def _check_same_encoding(cfg: TrainConfig, data: str, student_proc, teacher_proc) -> None:
    """The batch is encoded once, with the student's processor: the teacher's must encode it identically."""
    from mmpo.batches import SFTCollator

    media_root = str(default_media_root(data, cfg.data.media_root))
    first = read_sft(data, media_root)[:1]
    a, b = (SFTCollator(p, media_root, cfg.model.num_frames)(first)["prompt"] for p in (student_proc, teacher_proc))
    same = a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    if not same:
        raise ConfigError(f"teacher {cfg.distill.teacher.path!r} and student {cfg.model.path!r} processors encode "
                          "the same media/prompt differently; distillation needs one vision input format")


def _student(cfg: TrainConfig, mimic_dir: Path):
    """The student: fresh from cfg.model/cfg.lora, or the finished mimic stage's result (on resume)."""
    if not _done(mimic_dir):
        return load_model(cfg.model, cfg.lora, trainable=True)
    if (mimic_dir / "adapter").is_dir():
        return load_model(_replace(cfg.model, adapter=str(mimic_dir / "adapter")), cfg.lora, trainable=True)
    return load_model(_replace(cfg.model, path=str(mimic_dir / "model"), adapter=""), cfg.lora, trainable=True)


def _replace(model_cfg: ModelConfig, **changes) -> ModelConfig:
    out = copy.deepcopy(model_cfg)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


def _check_distill(cfg: TrainConfig) -> str:
    d = cfg.distill
    if d.preference_loss not in ("dpo", "kto_pair", "dpkd"):
        raise ConfigError(f"distill.preference_loss: expected dpo | kto_pair | dpkd, got {d.preference_loss!r}")
    if d.preference_steps > 0 and not d.preference_data:
        raise ConfigError("distill.preference_data: a pair JSONL is needed when distill.preference_steps > 0")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (d.mimic_steps > 0 or d.preference_loss == "dpkd"):
        # The mimic and DPKD batch losses call the student directly, not through the trainer's DDP-wrapped
        # step module, so gradients would not be averaged across processes.
        raise ConfigError("stage distill: the mimic stage and dpkd run on one process only (no accelerate launch)")
    if not 0.0 <= d.dpkd_ratio <= 1.0:
        raise ConfigError(f"distill.dpkd_ratio: expected 0..1, got {d.dpkd_ratio}")
    mimic_data = d.mimic_data or cfg.data.train
    if d.mimic_steps > 0 and not mimic_data:
        raise ConfigError("distill.mimic_data (or data.train): an SFT JSONL is needed when distill.mimic_steps > 0")
    return mimic_data


def run_distill(cfg: TrainConfig, eval_hook: Callable | None = None) -> Path:
    """Mimic distillation, then preference distillation with the teacher as the reference.

    Args:
        cfg: stage distill; cfg.model is the student (LoRA or full), distill.teacher the teacher.
        eval_hook: passed to both stages' `train`.

    Returns:
        The run directory: mimic/ and preference/ (each a `train` run; the final student is the last one's
        adapter/ or model/).
    """
    mimic_data = _check_distill(cfg)
    d, out = cfg.distill, Path(cfg.output_dir)
    check_vocab(cfg.model, d.teacher)
    out.mkdir(parents=True, exist_ok=True)
    cfgmod.save(cfg, out / "config.yaml")
    mimic_dir, pref_dir = out / "mimic", out / "preference"
    if _done(pref_dir) or (d.preference_steps == 0 and (d.mimic_steps == 0 or _done(mimic_dir))):
        return out
    teacher, teacher_proc = load_model(d.teacher, None, trainable=False)
    student, processor = _student(cfg, mimic_dir)
    if d.mimic_steps > 0 and not _done(mimic_dir):
        _check_same_encoding(cfg, mimic_data, processor, teacher_proc)
        mcfg = _derived(cfg, stage="sft", output_dir=str(mimic_dir), max_steps=d.mimic_steps,
                        data_train=mimic_data, data_media_root=cfg.data.media_root)
        train(mcfg, model=student, processor=processor, eval_hook=eval_hook,
              batch_loss=mimic_loss(student, teacher, d.mimic_nll_weight))
    if d.preference_steps > 0:
        train(preference_config(cfg, pref_dir), model=student, processor=processor, eval_hook=eval_hook,
              **preference_step(cfg, student, teacher))
    return out


def preference_config(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """The preference stage's config: stage dpo on distill.preference_data with the chosen loss."""
    d = cfg.distill
    name = "dpo" if d.preference_loss == "dpkd" else d.preference_loss  # dpkd brings its own batch_loss
    return _derived(cfg, stage="dpo", output_dir=str(run_dir), max_steps=d.preference_steps,
                    loss=[LossTerm(name=name, params={"beta": d.beta})], data_train=d.preference_data,
                    precompute_reference=False)


def preference_step(cfg: TrainConfig, student, teacher) -> dict:
    """`train` keyword arguments of the preference stage: the teacher reference, or the DPKD batch_loss."""
    d = cfg.distill
    if d.preference_loss == "dpkd":
        return {"batch_loss": dpkd_loss(student, teacher, d.beta, d.dpkd_ratio)}
    return {"reference": teacher_reference(teacher, {"reference"}, cfg.shared_prefix)}
