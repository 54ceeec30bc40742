"""Multi-round DPO (mrDPO, arXiv 2410.06682; code bytedance/video-SALMONN-2; docs/METHODS.md §4), per round r:

    merge the LoRA into the weights -> attach a fresh LoRA (zero effect at the start)
    -> reference = adapters disabled = the merged policy of round r-1
    -> sample answers on-policy, score them against the ground truth, best vs worst -> round-r/pairs.jsonl
    -> train `steps_per_round` steps on cfg.loss + gt_weight * NLL(ground truth)  ("gdpo")

Each round is its own run directory (`round-r/`, with checkpoints), so a killed run resumes inside the
round it was in: finished rounds are the ones with `round-r/summary.json` (written after the adapter),
and the model at the start of round r is rebuilt by merging the adapters of rounds 1..r-1, in order,
into the base. Rebirth tuning then SFTs the pre-DPO model on the final model's greedy answers.

Run layout: output_dir/config.yaml, round-1/{pairs.jsonl, manifest.json, adapter/, checkpoints/, ...}, ...,
model/ (merged final model), rebirth/{sft.jsonl, adapter/}.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from mmpo import config as cfgmod
from mmpo import folder_lock
from mmpo.checkpoint import check_rerun, finished
from mmpo.config import ConfigError, LossTerm, TrainConfig
from mmpo.distributed import start_processes
from mmpo.records import PairRecord, SFTRecord, pair_id, write_manifest
from mmpo.schedules import (
    derived_config,
    fresh_lora,
    generate_for,
    is_main,
    is_sharded,
    load_merged,
    read_prompts,
    seed_for,
    write_atomic,
)
from mmpo.trainer import resolve_media_root, train, write_pretrained

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


# ----------------------------------------------------------------------------- rounds

def rank_pair(record: SFTRecord, samples: list[str], scorer: Callable, min_gap: float,
              gt_fallback: bool) -> PairRecord | None:
    """Best-vs-worst pair from scored samples, or None when the score gap is not above `min_gap`.

    The sampling count and gap rule are the RECONSTRUCTION of docs/METHODS.md §4 step 3. When `gt_fallback`
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
    mr = cfg.multi_round
    if path.is_file():
        if is_main():
            log.info("round %d/%d: the pairs sampled before -> %s", round_no, mr.num_rounds, path)
        return path
    skipped: list[str] = []
    if is_main():  # the console says where a run is: three series of training lines alone do not
        log.info("round %d/%d: sampling %d answers to each of %d prompts", round_no, mr.num_rounds, mr.num_samples,
                 len(records))
    samples = generate_for(model, processor, records, resolve_media_root(cfg), cfg.model.num_frames,
                           batch_size=cfg.batch_size, num_samples=mr.num_samples, temperature=mr.temperature,
                           max_new_tokens=mr.max_new_tokens, seed=seed_for(cfg.seed, "round", round_no),
                           on_bad=cfg.data.on_bad_record, skipped=skipped)
    pairs = unique_pairs([p for rec, s in zip(records, samples)
                          if (p := rank_pair(rec, s, scorer, mr.min_gap, mr.gt_fallback)) is not None])
    if not pairs:
        raise ValueError(f"round {round_no}: no pair had a score gap above multi_round.min_gap={mr.min_gap} "
                         f"({len(records)} prompts, {mr.num_samples} samples each); "
                         "lower min_gap or enable gt_fallback")
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_main():
        write_manifest(path.parent, {"prompts": len(records), "pairs": len(pairs), "skipped": len(skipped),
                                     "chosen_is_gt": sum(p.meta["chosen_is_gt"] for p in pairs)},
                       cfgmod.to_dict(mr), cfg.seed, [{"reason": s} for s in skipped],
                       media_root=resolve_media_root(cfg), round=round_no)
    write_atomic(path, pairs)
    if is_main():
        log.info("round %d/%d: %d pairs (ground truth chosen in %d) -> %s; training a fresh LoRA on them", round_no,
                 mr.num_rounds, len(pairs), sum(p.meta["chosen_is_gt"] for p in pairs), path)
    return path


def round_config(cfg: TrainConfig, round_dir: Path, pairs: Path) -> TrainConfig:
    """The config of one round: stage dpo on the round's pairs, cfg.loss + the ground-truth NLL term."""
    loss = list(copy.deepcopy(cfg.loss))
    if cfg.multi_round.gt_weight > 0:  # mrDPO gdpo: CE on gt_input_ids with weight 0.1 (METHODS §4 step 4)
        loss.append(LossTerm(name="sft", weight=cfg.multi_round.gt_weight, params={"target": "gt"}))
    return derived_config(cfg, stage="dpo", output_dir=str(round_dir), max_steps=cfg.multi_round.steps_per_round,
                    loss=loss, data_train=str(pairs), data_media_root=resolve_media_root(cfg))


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
    score = _resolve_scorer(cfg, scorer)
    out, mr = Path(cfg.output_dir), cfg.multi_round
    procs = start_processes(cfg.parallel, cfg.dist_timeout_min)  # this rank's GPU before any model is loaded
    with folder_lock.run_folder(out, procs):  # one run per folder (rounds/stages lock their own too)
        check_rerun(cfg, out, procs)
        records, _ = read_prompts(cfg, resolve_media_root(cfg))  # bad lines: error, or skipped as train skips them
        if not records:
            raise ValueError(f"{cfg.data.train}: no usable prompts (every line was skipped)")
        rounds = [out / f"round-{r}" for r in range(1, mr.num_rounds + 1)]
        start = next((i for i, d in enumerate(rounds) if not finished(d)), len(rounds))
        merged_saved = not mr.save_merged or (out / "model" / "config.json").is_file()
        if start == len(rounds) and merged_saved and (not mr.rebirth or finished(out / "rebirth")):
            return out  # everything finished before
        # State at the start of the first unfinished round: the base with finished rounds merged in order.
        model, processor = load_merged(cfg.model, [d / "adapter" for d in rounds[:start]])
        policy = None
        for i in range(start, len(rounds)):
            pairs = round_pairs(model, processor, cfg, records, i + 1, score, rounds[i] / "pairs.jsonl")
            policy = fresh_lora(model, cfg, salt=i + 1)
            if round_hook is not None:
                round_hook(i + 1, policy, processor)
            train(round_config(cfg, rounds[i], pairs), model=policy, processor=processor, eval_hook=eval_hook)
            if is_sharded(policy):  # FSDP2 split the weights over the ranks: rebuild the merged model from the adapters
                model, processor = load_merged(cfg.model, [d / "adapter" for d in rounds[:i + 1]])
            else:
                model = policy.merge_and_unload()  # the next round's reference
                model.requires_grad_(False)
        if not merged_saved and is_main():
            write_pretrained(model, processor, out / "model")
            from mmpo.model_card import data_facts, write_model_card

            last = json.loads((rounds[-1] / "summary.json").read_text())  # skips of the last round
            steps = sum(json.loads((d / "summary.json").read_text())["steps"] for d in rounds)
            write_model_card(out / "model", cfg, {**last, "steps": steps}, data_facts(cfg.data.train, len(records), 0),
                             method=_method(cfg))
        if mr.rebirth and not finished(out / "rebirth"):
            if is_main():
                log.info("rebirth: the final model answers the %d prompts, and the pre-DPO model is tuned on them",
                         len(records))
            data = rebirth_data(cfg, model, processor, records)
            del model, policy  # free the final model before the pre-DPO one is loaded
            rebirth(cfg, data)
        return out


def _method(cfg: TrainConfig) -> str:
    """The merged model's card: what the rounds did."""
    mr = cfg.multi_round
    gt = f", plus the ground truth's NLL x {mr.gt_weight}" if mr.gt_weight else ""
    return (f"Multi-round DPO (mrDPO, arXiv 2410.06682): {mr.num_rounds} rounds of {mr.steps_per_round} steps. Each "
            f"round samples {mr.num_samples} answers per prompt of `{cfg.data.train}` from the current model, pairs "
            f"the best and the worst by the `{mr.scorer}` score against the ground truth, trains a fresh LoRA on "
            f"them with the terms below{gt}, and merges it into the model."
            + (" Rebirth tuning follows in `rebirth/` (its own adapter)." if mr.rebirth else ""))


def rebirth_data(cfg: TrainConfig, final_model, processor, records: list[SFTRecord]) -> Path:
    """The final model's greedy answers to every training prompt, as `rebirth/sft.jsonl` (reused if present).

    Greedy decoding, as the published caption evaluation; empty answers are left out.
    """
    data = Path(cfg.output_dir) / "rebirth" / "sft.jsonl"
    if data.is_file():
        return data
    answers = generate_for(final_model, processor, records, resolve_media_root(cfg), cfg.model.num_frames,
                           batch_size=cfg.batch_size, num_samples=1, temperature=0.0,
                           max_new_tokens=cfg.multi_round.max_new_tokens, seed=cfg.seed,
                           on_bad=cfg.data.on_bad_record)
    sft = [SFTRecord(r.id, r.media, r.media_type, r.prompt, a[0], {"gt": r.answer})
           for r, a in zip(records, answers) if a and a[0].strip()]
    if not sft:
        raise ValueError(f"rebirth: the final model gave only empty answers to the {len(records)} prompts of "
                         f"{cfg.data.train}, so there is nothing to tune on; the rounds' results are kept in "
                         f"{cfg.output_dir} (model/, round-*/adapter): rerun with multi_round.rebirth=false to finish "
                         "without rebirth, or raise multi_round.max_new_tokens")
    data.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(data, sft)
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
    rcfg = derived_config(cfg, stage="sft", output_dir=str(Path(cfg.output_dir) / "rebirth"),
                    max_steps=cfg.multi_round.rebirth_steps, data_train=str(data),
                    data_media_root=resolve_media_root(cfg))
    return train(rcfg, model=fresh_lora(base, cfg, salt=0), processor=processor)
