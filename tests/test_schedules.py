"""Schedules on tiny LLaVAs: multi-round DPO (reference refresh, fresh LoRA, gt guidance, resume, rebirth)
and distillation (mimic KL, teacher-as-reference DPO, DPKD, vocabulary check)."""

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model, toy_pairs, toy_sft

from mmpo.batches import PairCollator, SFTCollator
from mmpo.config import ConfigError, ModelConfig, TrainConfig, load
from mmpo.distill import run_distill
from mmpo.logprobs import plain_logps
from mmpo.metrics import read_metrics
from mmpo.models import encode_answers, reference_mode
from mmpo.multi_round import SCORERS, rank_pair, run_multi_round
from mmpo.records import read_pairs, read_sft
from mmpo.schedules import generate_for, load_merged

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    return {"root": root, "model": tiny_model("llava", root), "teacher": tiny_model("llava", root, seed=1),
            "sft": toy_sft(root / "data", n=8), "pairs": toy_pairs(root / "data", n=8)}


def _mr_cfg(world, out, *overrides):
    return load(TrainConfig, CONFIGS / "multi_round_tiny_cpu.yaml", [
        f"model.path={world['model']}", f"data.train={world['sft']}", f"output_dir={out}", "save_every=1",
        "multi_round.num_samples=2", "multi_round.max_new_tokens=4", "multi_round.rebirth_steps=1", *overrides])


def _probe(world, processor, n=2):
    recs = read_sft(world["sft"], world["sft"].parent)[:n]
    return SFTCollator(processor, str(world["sft"].parent), 4)(recs)


@torch.no_grad()
def _answer_logps(model, batch, key="answer"):
    return plain_logps(model, batch.prompt, getattr(batch, key))[0]


@pytest.fixture(scope="module")
def mr_run(world):
    """One uninterrupted 2-round run (with rebirth); the round hook records the policy at each round start."""
    starts = {}

    def hook(r, model, processor):
        batch = _probe(world, processor)
        with reference_mode(model):
            ref = _answer_logps(model, batch)
        starts[r] = {"with_adapter": _answer_logps(model, batch), "reference": ref}

    out = world["root"] / "mr_whole"
    run_multi_round(_mr_cfg(world, out), round_hook=hook)
    return {"out": out, "starts": starts}


def test_reference_of_round_2_is_the_merged_round_1_policy(world, mr_run):
    from peft import PeftModel

    base, processor = load_merged(ModelConfig(path=str(world["model"])))
    batch = _probe(world, processor)
    base_logps = _answer_logps(base, batch)
    round1 = PeftModel.from_pretrained(base, str(mr_run["out"] / "round-1" / "adapter"))  # unmerged LoRA
    round1_logps = _answer_logps(round1, batch)
    starts = mr_run["starts"]
    assert not torch.allclose(round1_logps, base_logps, atol=1e-3)  # round 1 changed the policy
    torch.testing.assert_close(starts[2]["reference"], round1_logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(starts[1]["reference"], base_logps, atol=1e-5, rtol=0)
    for r in (1, 2):  # a fresh LoRA starts with zero effect
        assert torch.equal(starts[r]["with_adapter"], starts[r]["reference"])


def test_rounds_write_pairs_configs_merged_model_and_rebirth(world, mr_run):
    out = mr_run["out"]
    gts = {r.id: r.answer for r in read_sft(world["sft"], world["sft"].parent)}
    for r in (1, 2):
        pairs = read_pairs(out / f"round-{r}" / "pairs.jsonl")
        assert pairs and all(p.meta["gt"] == gts[p.meta["sft_id"]] for p in pairs)
        cfg = load(TrainConfig, out / f"round-{r}" / "config.yaml")
        assert cfg.stage == "dpo" and cfg.max_steps == 3
        assert [(t.name, t.weight, t.params) for t in cfg.loss] == [("dpo", 1.0, {}), ("sft", 0.1, {"target": "gt"})]
        assert (out / f"round-{r}" / "adapter" / "adapter_model.safetensors").is_file()
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "model" / "README.md")  # the merged model's card (each round's adapter has one too)
    assert card.data.library_name == "transformers" and "multi_round" in card.data.tags
    assert "Multi-round DPO (mrDPO, arXiv 2410.06682): 2 rounds of 3 steps" in card.text and "| steps | 6 |" in card.text
    assert "model.path=THIS_FOLDER`" in card.text  # a full model is evaluated as itself, not as the base
    assert ModelCard.load(out / "round-2" / "adapter" / "README.md").data.library_name == "peft"
    # rebirth: the final (merged) model's greedy answers, SFT'd into a fresh LoRA on the pre-DPO model
    final, processor = load_merged(ModelConfig(path=str(out / "model")))
    recs = read_sft(world["sft"], world["sft"].parent)
    greedy = generate_for(final, processor, recs, str(world["sft"].parent), 4, batch_size=4, num_samples=1,
                          temperature=0.0, max_new_tokens=4, seed=0)
    reborn = read_sft(out / "rebirth" / "sft.jsonl", world["sft"].parent)
    assert [r.answer for r in reborn] == [g[0] for g in greedy if g[0].strip()]
    assert load(TrainConfig, out / "rebirth" / "config.yaml").stage == "sft"
    assert (out / "rebirth" / "adapter" / "adapter_model.safetensors").is_file()


class Crash(RuntimeError):
    pass


def test_resume_inside_round_2_reproduces_the_uninterrupted_run(world, mr_run, tmp_path, caplog):
    from safetensors.torch import load_file

    calls = []

    def crash(model, processor, step):
        calls.append(step)
        if len(calls) == 5:  # round 1 has 3 steps; this is round 2, after step 2 (last checkpoint: step 1)
            raise Crash("killed")
        return {}

    with pytest.raises(Crash), caplog.at_level(logging.INFO, logger="mmpo"):
        run_multi_round(_mr_cfg(world, tmp_path, "eval_every=1"), eval_hook=crash)
    assert not (tmp_path / "round-2" / "summary.json").exists()
    assert "round 1/2: sampling 2 answers to each of" in caplog.text and "round 2/2: " in caplog.text  # the console
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mmpo"):
        run_multi_round(_mr_cfg(world, tmp_path))
    assert "round 2/2: the pairs sampled before" in caplog.text and "rebirth: the final model answers" in caplog.text

    whole = mr_run["out"]
    for name in ("round-1/pairs.jsonl", "round-2/pairs.jsonl", "rebirth/sft.jsonl"):
        assert (tmp_path / name).read_text() == (whole / name).read_text()
    losses = {r["step"]: r["loss"] for r in read_metrics(whole / "round-2")}
    resumed = [r for r in read_metrics(tmp_path / "round-2") if "loss" in r]
    assert [r["step"] for r in resumed] == [1, 2, 3]  # step 2 ran twice (crash, resume from 1), logged once
    for r in resumed:
        assert r["loss"] == pytest.approx(losses[r["step"]], abs=1e-6)
    for name in ("round-2/adapter", "rebirth/adapter"):
        a = load_file(whole / name / "adapter_model.safetensors")
        b = load_file(tmp_path / name / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_guidance_term_is_the_ground_truth_nll_not_the_chosen_one(world, tmp_path):
    def scorer(answer, record):  # a stand-in for the demo's world scorer: any deterministic ranking
        return float(sum(map(ord, answer)) % 97)

    cfg = _mr_cfg(world, tmp_path, "multi_round.num_rounds=1", "multi_round.steps_per_round=1",
                  "multi_round.num_samples=3", "multi_round.gt_fallback=false", "multi_round.gt_weight=0.5",
                  "multi_round.rebirth=false", "multi_round.save_merged=false", "batch_size=2", "data.shuffle=false")
    run_multi_round(cfg, scorer=scorer)
    pairs = read_pairs(tmp_path / "round-1" / "pairs.jsonl", world["sft"].parent)
    assert len(pairs) >= 2 and all(p.chosen != p.meta["gt"] and not p.meta["chosen_is_gt"] for p in pairs)

    base, processor = load_merged(ModelConfig(path=str(world["model"])))
    batch = PairCollator(processor, str(world["sft"].parent), 4, requires=frozenset({"gt"}))(pairs[:2])
    gt_ids = encode_answers(processor, [p.meta["gt"] for p in pairs[:2]])["input_ids"]
    assert torch.equal(batch.extra["gt"]["input_ids"], gt_ids)
    assert not torch.equal(batch.extra["gt"]["input_ids"], batch.chosen["input_ids"])
    # step 1: the policy is the base (fresh LoRA), so the logged term is the base's NLL of the gt answer
    def nll(key):
        logp, n = plain_logps(base, batch.prompt, batch.extra["gt"] if key == "gt" else batch.chosen)
        return float((-logp / n).mean())

    with torch.no_grad():
        gt_nll, chosen_nll = nll("gt"), nll("chosen")
    logged = read_metrics(tmp_path / "round-1")[0]["sft/nll_gt"]
    assert logged == pytest.approx(gt_nll, abs=1e-4) and abs(logged - chosen_nll) > 1e-2


def test_rank_pair_picks_best_vs_worst_and_falls_back_to_the_ground_truth(world):
    rec = read_sft(world["sft"], world["sft"].parent)[0]  # answer "red"
    exact = SCORERS["exact"]
    pair = rank_pair(rec, ["Red.", "blue", ""], exact, 0.0, gt_fallback=False)
    assert (pair.chosen, pair.rejected, pair.meta["gt"]) == ("Red.", "blue", "red")
    pair = rank_pair(rec, ["green", "blue"], exact, 0.0, gt_fallback=True)
    assert pair.chosen == "red" and pair.meta["chosen_is_gt"]
    assert rank_pair(rec, ["green", "blue"], exact, 0.0, gt_fallback=False) is None  # no gap
    assert SCORERS["token_f1"]("a red square", rec) == pytest.approx(0.5)


def test_repeated_sft_samples_give_one_pair_in_a_round_pair_file(world, tmp_path):
    from mmpo.models import load_model
    from mmpo.multi_round import round_pairs

    cfg = _mr_cfg(world, tmp_path, "batch_size=2", "multi_round.num_samples=1", "multi_round.temperature=0",
                  "multi_round.max_new_tokens=3")
    model, processor = load_model(cfg.model)
    sft = read_sft(world["sft"])[:1] * 2  # the same sample twice, side by side: greedy answers are equal
    path = round_pairs(model, processor, cfg, sft, 1, SCORERS["exact"], tmp_path / "round-1" / "pairs.jsonl")
    pairs = read_pairs(path)  # pair files must not repeat an id
    assert len(pairs) == 1 and pairs[0].chosen == sft[0].answer


# ----------------------------------------------------------------------------- distillation

def _distill_cfg(world, out, *overrides):
    return load(TrainConfig, CONFIGS / "distill_tiny_cpu.yaml", [
        f"model.path={world['model']}", f"distill.teacher.path={world['teacher']}", f"data.train={world['sft']}",
        f"distill.preference_data={world['pairs']}", f"output_dir={out}", *overrides])


def test_mimic_kl_is_zero_for_student_equal_to_teacher(world, tmp_path):
    run_distill(_distill_cfg(world, tmp_path, f"model.path={world['teacher']}", "distill.mimic_steps=1",
                             "distill.preference_steps=0"))
    assert read_metrics(tmp_path / "mimic")[0]["mimic/kl"] < 1e-6


def test_mimic_then_preference_distillation(world, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mmpo"):
        run_distill(_distill_cfg(world, tmp_path, "distill.mimic_steps=6", "lr=1e-2"))
    assert "train[mimic] step 6/6" in caplog.text and "train[dpo] step 2/2" in caplog.text
    # the mimic stage's card says what it trained (its config says stage sft, which trained the NLL)
    mimic_card = (tmp_path / "mimic" / "adapter" / "README.md").read_text()
    assert "Mimic distillation from the teacher" in mimic_card and "negative log-likelihood" not in mimic_card
    pref_card = (tmp_path / "preference" / "adapter" / "README.md").read_text()
    assert "Preference distillation: the teacher" in pref_card and "the loss is the weighted sum" in pref_card.lower()
    kl = [r["mimic/kl"] for r in read_metrics(tmp_path / "mimic")]
    assert kl[0] > 1e-3 and kl[-1] < 0.7 * kl[0]
    rows = read_metrics(tmp_path / "preference")
    assert len(rows) == 2 and "rewards/margins" in rows[0]
    assert (tmp_path / "preference" / "adapter" / "adapter_model.safetensors").is_file()
    assert load(TrainConfig, tmp_path / "preference" / "config.yaml").data.train == str(world["pairs"])


def test_distillation_resumes_inside_the_preference_stage(world, tmp_path):
    from safetensors.torch import load_file

    run_distill(_distill_cfg(world, tmp_path / "whole", "save_every=1"))
    calls = []

    def crash(model, processor, step):
        calls.append(step)
        if len(calls) == 6:  # mimic has 4 steps; this is preference step 2 (last checkpoint: step 1)
            raise Crash("killed")
        return {}

    with pytest.raises(Crash):
        run_distill(_distill_cfg(world, tmp_path / "broken", "save_every=1", "eval_every=1"), eval_hook=crash)
    assert (tmp_path / "broken" / "mimic" / "summary.json").is_file()
    run_distill(_distill_cfg(world, tmp_path / "broken", "save_every=1"))
    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole" / "preference")}
    resumed = [r for r in read_metrics(tmp_path / "broken" / "preference") if "loss" in r]
    assert [r["step"] for r in resumed] == [1, 2]  # step 2 re-run after the crash, logged once
    assert all(r["loss"] == pytest.approx(losses[r["step"]], abs=1e-6) for r in resumed)
    a = load_file(tmp_path / "whole" / "preference" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "preference" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _hand_batch(world):
    student, processor = load_merged(ModelConfig(path=str(world["model"])))
    teacher, _ = load_merged(ModelConfig(path=str(world["teacher"])))
    pairs = read_pairs(world["pairs"], world["pairs"].parent)
    return student, teacher, PairCollator(processor, str(world["pairs"].parent), 4)(pairs)


def test_preference_distillation_is_dpo_with_the_teacher_as_reference(world, tmp_path):
    run_distill(_distill_cfg(world, tmp_path, "distill.mimic_steps=0", "distill.preference_steps=1",
                             "batch_size=8", "loss=[{name: dpo, params: {beta: 0.5}}]"))
    student, teacher, batch = _hand_batch(world)  # batch_size 8 = every pair: the mean ignores the order
    with torch.no_grad():
        h = (_answer_logps(student, batch, "chosen") - _answer_logps(teacher, batch, "chosen")
             - _answer_logps(student, batch, "rejected") + _answer_logps(teacher, batch, "rejected"))
    expected = float(-F.logsigmoid(0.5 * h).mean())
    assert abs(float(h.abs().mean())) > 0.1  # the teacher differs from the student: a real check
    assert read_metrics(tmp_path / "preference")[0]["loss"] == pytest.approx(expected, abs=1e-4)


def test_dpkd_with_teacher_equal_to_student_is_ce_plus_log2(world, tmp_path):
    run_distill(_distill_cfg(world, tmp_path, f"model.path={world['teacher']}", "distill.mimic_steps=0",
                             "distill.preference_steps=1", "distill.dpkd=true", "batch_size=8",
                             "distill.dpkd_ratio=0.25"))
    _, teacher, batch = _hand_batch(world)
    with torch.no_grad():
        logp, n = plain_logps(teacher, batch.prompt, batch.chosen)
    ce = float(-logp.sum() / n.sum())  # token mean over the batch
    row = read_metrics(tmp_path / "preference")[0]
    assert "- DPKD (arXiv 2406.19774) from the teacher" in (tmp_path / "preference" / "adapter" / "README.md").read_text()
    assert row["dpkd/loss"] == pytest.approx(math.log(2), abs=1e-6)  # h_t = 0 at every token: LS(0) = log 2
    assert row["loss"] == pytest.approx(0.75 * ce + 0.25 * math.log(2), abs=1e-4)


def test_vocabulary_mismatch_is_an_error_naming_both_models(world, tmp_path):
    other = tiny_model("llava", world["root"], words=("zebra",))
    with pytest.raises(ConfigError, match="differ") as err:
        run_distill(_distill_cfg(world, tmp_path, f"distill.teacher.path={other}"))
    assert str(world["model"]) in str(err.value) and str(other) in str(err.value)


def test_a_missing_student_or_teacher_folder_is_said_as_such(world, tmp_path):
    """Not transformers' "couldn't connect to huggingface.co" (models load from local folders only)."""
    with pytest.raises(FileNotFoundError, match=r"distill.teacher folder not found: '.*nope'.*mmpo make-model"):
        run_distill(_distill_cfg(world, tmp_path, f"distill.teacher.path={tmp_path / 'nope'}"))
    with pytest.raises(FileNotFoundError, match=r"model folder not found: '.*nope'"):
        run_distill(_distill_cfg(world, tmp_path, f"model.path={tmp_path / 'nope'}"))


def test_max_steps_is_refused_where_a_schedule_sets_the_steps_itself():
    with pytest.raises(ConfigError, match=r"max_steps: stage multi_round sets the steps of each part itself "
                                          r"\(multi_round.steps_per_round"):
        load(TrainConfig, None, ["stage=multi_round", "max_steps=1"])
    with pytest.raises(ConfigError, match=r"max_steps: stage distill .*distill.mimic_steps, distill.preference_steps"):
        load(TrainConfig, None, ["stage=distill", "max_steps=1", "distill.preference_steps=0"])


def test_a_missing_adapter_folder_says_where_adapters_come_from():
    from mmpo.models.loading import check_folder

    with pytest.raises(FileNotFoundError, match=r"adapter folder not found: 'runs/nope/adapter' \(an adapter is what "
                                                r"`mmpo train` saves"):
        check_folder("runs/nope/adapter", "adapter")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_train_config_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# mmpo train --config configs/train/")
    assert load(TrainConfig, path).stage in ("dpo", "sft", "multi_round", "distill")


def test_config_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="lora.enabled"):
        run_multi_round(_mr_cfg(world, tmp_path, "lora.enabled=false"))
    with pytest.raises(ConfigError, match="unknown scorer"):
        run_multi_round(_mr_cfg(world, tmp_path, "multi_round.scorer=nope"))
    # the old loss picker is refused, saying where the loss goes now (the top-level `loss:` list)
    with pytest.raises(ConfigError, match=r"distill.preference_loss: removed: .*`loss:`.*distill.dpkd: true"):
        run_distill(_distill_cfg(world, tmp_path, "distill.preference_loss=ipo"))
    with pytest.raises(ConfigError, match=r"distill.beta: removed: .*params.*dpkd_beta"):
        load(TrainConfig, None, ["stage=distill", "distill.beta=0.5"])
    with pytest.raises(ConfigError, match=r"lora.enabled: full fine-tuning .* set precompute_reference: true"):
        load(TrainConfig, None, ["lora.enabled=false"])  # the dpo term's reference would be the policy itself
    load(TrainConfig, None, ["lora.enabled=false", "precompute_reference=true"])


def test_a_stage_with_nothing_to_train_is_refused_before_it_starts():
    """An empty `loss:` crashed at step 1 (a float has no .backward()); `mmpo validate` missed the mimic data."""
    for stage in ("stage=dpo", "stage=multi_round multi_round.gt_weight=0",
                  "stage=distill distill.preference_data=p.jsonl"):
        with pytest.raises(ConfigError, match=f"loss: no terms, so stage {stage.split()[0][6:]} would train nothing"):
            load(TrainConfig, None, [*stage.split(), "loss=[]"])
    for fine in ("stage=sft", "stage=multi_round", "stage=distill distill.dpkd=true distill.preference_data=p.jsonl"):
        load(TrainConfig, None, [*fine.split(), "loss=[]", "data.train=d.jsonl"])  # sft / the gt term / DPKD train
    with pytest.raises(ConfigError, match=r"distill.mimic_data \(or data.train\): an SFT JSONL is needed"):
        load(TrainConfig, None, ["stage=distill", "distill.preference_steps=0"])


def test_old_distill_keys_in_a_file_are_refused_naming_the_new_ones(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("stage: distill\ndistill:\n  preference_loss: kto_pair\n  beta: 0.2\n")
    with pytest.raises(ConfigError) as err:
        load(TrainConfig, path)
    removed = [e.split(": removed")[0] for e in err.value.errors if ": removed" in e]
    assert removed == [f"{path}: distill.beta", f"{path}: distill.preference_loss"]
