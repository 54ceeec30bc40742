"""Distillation (LLaVA-MoD, arXiv 2408.15881; code shufangxun/LLaVA-MoD; docs/METHODS.md §5, §6.5): a mimic stage
(token-level forward KL(p_T || p_S) on answer tokens, `mimic/`), then a preference stage with the TEACHER as the
reference (`preference/`): the config's `loss:` terms (dpo, LLaVA-MoD's kto_pair, any LOSSES entry), or DPKD
(`distill.dpkd`: a token-level loss on both models' logits, so a stage option rather than a term). The KL and DPKD
maths live in `mmpo.losses`; this module wires them to the two models and runs both stages through
`mmpo.trainer.train`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from mmpo import folder_lock
from mmpo.batches import PairBatch, SFTBatch, SFTCollator
from mmpo.checkpoint import check_rerun, finished
from mmpo.config import ConfigError, ModelConfig, TrainConfig
from mmpo.distributed import start_processes
from mmpo.logprobs import answer_logits, token_logps
from mmpo.losses import dpkd, masked_mean, mimic_kl, requires_of
from mmpo.models import load_model
from mmpo.models.loading import check_folder
from mmpo.records import default_media_root, scan_records
from mmpo.requirements import PairLogps, pair_logps, reference_pass
from mmpo.schedules import derived_config, seed_for
from mmpo.trainer import Method, train


def check_vocab(student: ModelConfig, teacher: ModelConfig) -> None:
    """Raise ConfigError unless both tokenizers have the same vocabulary (token -> id)."""
    from transformers import AutoTokenizer

    def vocab(m: ModelConfig, what: str) -> dict:
        check_folder(m.path, what)  # a missing folder: said as such, not as the hub's "couldn't connect"
        return AutoTokenizer.from_pretrained(m.path, local_files_only=True,
                                             trust_remote_code=m.trust_remote_code).get_vocab()

    a, b = vocab(student, "model"), vocab(teacher, "distill.teacher")
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=str)[:3]
        raise ConfigError(f"distillation needs one vocabulary: student {student.path!r} ({len(a)} tokens) and "
                          f"teacher {teacher.path!r} ({len(b)} tokens) differ, e.g. {diff}")


def mimic_loss(student, teacher, nll_weight: float) -> Callable:
    """batch_loss of the mimic stage on SFT batches: `mmpo.losses.mimic_kl` (+ nll_weight * the student's NLL,
    LLaVA-MoD `kd_lm`)."""
    def batch_loss(batch: SFTBatch, progress: float):
        answer = batch.answer
        s_logits = answer_logits(student, batch.prompt, answer)
        with torch.no_grad():
            t_logits = answer_logits(teacher, batch.prompt, answer)
        kl = mimic_kl(s_logits, t_logits, answer["attention_mask"])
        loss, metrics = kl, {"mimic/kl": kl.item()}
        if nll_weight:
            nll = -masked_mean(token_logps(s_logits, answer["input_ids"]), answer["attention_mask"])
            loss, metrics["mimic/nll"] = loss + nll_weight * nll, nll.item()
        return loss, metrics
    return batch_loss


def teacher_reference(teacher, requires: set, shared_prefix: bool) -> Callable[..., PairLogps]:
    """The reference callable for preference distillation: pair log-probs under the teacher, no grad."""
    def reference(batch) -> PairLogps:
        with torch.no_grad():
            return pair_logps(teacher, batch, requires, shared_prefix)
    return reference


def dpkd_loss(student, teacher, beta: float, kd_ratio: float) -> Callable:
    """batch_loss of DPKD (`mmpo.losses.dpkd`) on pair batches, the pair's chosen answer as the gold response."""
    def batch_loss(batch: PairBatch, progress: float):
        chosen = batch.chosen
        s_logits = answer_logits(student, batch.prompt, chosen)
        with torch.no_grad():
            t_logits = answer_logits(teacher, batch.prompt, chosen)
        return dpkd(s_logits, t_logits, chosen["input_ids"], chosen["attention_mask"], beta, kd_ratio)
    return batch_loss


def _check_same_encoding(cfg: TrainConfig, data: str, student_proc, teacher_proc) -> None:
    """The batch is encoded once, with the student's processor: the teacher's must encode it identically."""
    media_root = str(default_media_root(data, cfg.data.media_root))
    records, _ = scan_records(data, "sft", media_root, cfg.data.on_bad_record)  # skips as the training will
    collators = [SFTCollator(p, media_root, cfg.model.num_frames, on_bad=cfg.data.on_bad_record)
                 for p in (student_proc, teacher_proc)]
    # the first record whose media decode (with on_bad_record=skip a corrupt one is passed over, as train does)
    first = next((r for r in records if collators[0]([r]).ids), None)
    records.close()
    if first is None:
        return  # nothing usable: the stage's own read reports it
    a, b = (c([first]).prompt for c in collators)
    same = a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    if not same:
        raise ConfigError(f"teacher {cfg.distill.teacher.path!r} and student {cfg.model.path!r} processors encode "
                          "the same media/prompt differently; distillation needs one vision input format")


def _student(cfg: TrainConfig, mimic_dir: Path):
    """The student: fresh from cfg.model/cfg.lora, or the finished mimic stage's result (on resume).

    Its fresh LoRA is seeded by the run's seed, so every process (and every rerun) starts from the same one.
    """
    torch.manual_seed(seed_for(cfg.seed, "student"))
    if not finished(mimic_dir):
        return load_model(cfg.model, cfg.lora, trainable=True)
    if (mimic_dir / "adapter").is_dir():
        return load_model(dataclasses.replace(cfg.model, adapter=str(mimic_dir / "adapter")), cfg.lora, trainable=True)
    return load_model(dataclasses.replace(cfg.model, path=str(mimic_dir / "model"), adapter=""), cfg.lora,
                      trainable=True)


def run_distill(cfg: TrainConfig, eval_hook: Callable | None = None) -> Path:
    """Mimic distillation, then preference distillation with the teacher as the reference.

    Args:
        cfg: stage distill; cfg.model is the student (LoRA or full), distill.teacher the teacher.
        eval_hook: passed to both stages' `train`.

    Returns:
        The run directory: mimic/ and preference/ (each a `train` run; the final student is the last one's
        adapter/ or model/).
    """
    d, out = cfg.distill, Path(cfg.output_dir)
    mimic_data = d.mimic_data or cfg.data.train  # TrainConfig checked it is set if mimic_steps > 0
    check_vocab(cfg.model, d.teacher)
    procs = start_processes(cfg.parallel, cfg.dist_timeout_min)  # this rank's GPU before any model is loaded
    with folder_lock.run_folder(out, procs):  # one run per folder (rounds/stages lock their own too)
        check_rerun(cfg, out, procs)
        mimic_dir, pref_dir = out / "mimic", out / "preference"
        if finished(pref_dir) or (d.preference_steps == 0 and (d.mimic_steps == 0 or finished(mimic_dir))):
            return out
        teacher, teacher_proc = load_model(d.teacher, None, trainable=False)
        student, processor = _student(cfg, mimic_dir)
        if d.mimic_steps > 0 and not finished(mimic_dir):
            _check_same_encoding(cfg, mimic_data, processor, teacher_proc)
            mcfg = derived_config(cfg, stage="sft", output_dir=str(mimic_dir), max_steps=d.mimic_steps,
                            data_train=mimic_data, data_media_root=cfg.data.media_root)
            train(mcfg, model=student, processor=processor, eval_hook=eval_hook,
                  batch_loss=mimic_loss(student, teacher, d.mimic_nll_weight), method=mimic_method(cfg))
        if d.preference_steps > 0:
            train(preference_config(cfg, pref_dir), model=student, processor=processor, eval_hook=eval_hook,
                  **preference_step(cfg, student, teacher))
        return out


def preference_config(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """The preference stage's config: stage dpo on distill.preference_data with the `loss:` terms.

    DPKD is not a LOSSES term (it needs both models' logits, not log-probs): its stage has no loss terms
    and runs `dpkd_loss` as the batch loss, so the saved config does not claim a DPO loss that never ran.
    """
    d = cfg.distill
    return derived_config(cfg, stage="dpo", output_dir=str(run_dir), max_steps=d.preference_steps,
                          loss=[] if d.dpkd else cfg.loss, data_train=d.preference_data, precompute_reference=False)


def mimic_method(cfg: TrainConfig) -> Method:
    d = cfg.distill
    nll = f" + {d.mimic_nll_weight} × the student's own NLL (LLaVA-MoD kd_lm)" if d.mimic_nll_weight else ""
    return Method("mimic", f"Mimic distillation from the teacher `{d.teacher.path}`: forward KL(teacher ‖ student) "
                           f"over the vocabulary at each answer token (LLaVA-MoD){nll}.")


def preference_step(cfg: TrainConfig, student, teacher) -> dict:
    """`train` keyword arguments of the preference stage: the teacher reference, or the DPKD batch_loss."""
    d = cfg.distill
    if d.dpkd:
        return {"batch_loss": dpkd_loss(student, teacher, d.dpkd_beta, d.dpkd_ratio),
                "method": Method("dpkd", f"DPKD (arXiv 2406.19774) from the teacher `{d.teacher.path}`: "
                                         f"(1 - {d.dpkd_ratio}) × CE(chosen) + {d.dpkd_ratio} × L_DPKD, "
                                         f"beta {d.dpkd_beta}.")}
    return {"reference": teacher_reference(teacher, reference_pass(requires_of(cfg.loss)), cfg.shared_prefix),
            "method": Method("+".join(t.name for t in cfg.loss),
                             f"Preference distillation: the teacher `{d.teacher.path}` is the reference"
                             + (" (the student continues from the mimic stage)." if d.mimic_steps else "."))}
