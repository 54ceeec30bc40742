"""The training loop on a tiny LLaVA: learning, exact resume, accumulation invariance, bad data, references."""

import json
import os
import shutil

import pytest
import torch
from helpers import tiny_model, toy_pairs, toy_sft

from mmpo.config import TrainConfig, load
from mmpo.metrics import read_metrics
from mmpo.records import write_jsonl
from mmpo.trainer import train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    return {"root": root, "model": tiny_model("llava", root), "pairs": toy_pairs(root / "data"),
            "sft": toy_sft(root / "data")}


def _cfg(world, out, *overrides):
    return load(TrainConfig, None, [f"model.path={world['model']}", f"data.train={world['pairs']}",
                                    f"output_dir={out}", "progress=false", "lora.r=4", "lr=5e-3",
                                    "warmup_ratio=0", "batch_size=4", *overrides])


def _lora(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_dpo_changes_every_lora_parameter_and_learns(world, tmp_path):
    from mmpo.models import load_model

    cfg = _cfg(world, tmp_path / "run", "max_steps=24")
    model, processor = load_model(cfg.model, cfg.lora, trainable=True)
    with torch.no_grad():  # peft starts lora_B at zero; record the start
        before = _lora(model)
    train(cfg, model=model, processor=processor)
    after = _lora(model)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters not updated: {unchanged[:3]}"
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["rewards/accuracies"] <= 0.5
    assert sum(r["rewards/accuracies"] for r in rows[-4:]) / 4 >= 0.9
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "pairs_per_s", "peak_mem_gb"):
        assert key in rows[-1]


def test_final_adapter_loads_with_peft(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    train(_cfg(world, tmp_path / "run", "max_steps=2"))
    base = AutoModelForImageTextToText.from_pretrained(world["model"])
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    umask = os.umask(0)
    os.umask(umask)
    # safetensors writes 0600; the saved folder follows the umask, so colleagues can read the adapter
    assert {f.stat().st_mode & 0o777 for f in (tmp_path / "run" / "adapter").iterdir()} == {0o666 & ~umask}


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_equals_an_uninterrupted_run(world, tmp_path):
    whole = _cfg(world, tmp_path / "whole", "max_steps=6", "save_every=2", "lora.dropout=0.3")  # RNG resumes too
    train(whole)

    def crash_at_5(model, processor, step):
        if step == 5:
            raise Crash("killed")
        return {}

    broken = _cfg(world, tmp_path / "broken", "max_steps=6", "save_every=2", "eval_every=1", "lora.dropout=0.3")
    with pytest.raises(Crash):
        train(broken, eval_hook=crash_at_5)
    train(_cfg(world, tmp_path / "broken", "max_steps=6", "save_every=2", "lora.dropout=0.3"))  # resumes from 4

    losses = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole")}
    resumed = [r for r in read_metrics(tmp_path / "broken") if "loss" in r]
    # step 5 ran twice (before the crash and after resuming from step 4) but is logged once: no duplicates, no gaps
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for r in resumed:
        assert r["loss"] == pytest.approx(losses[r["step"]], abs=1e-6)
    from safetensors.torch import load_file
    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same arithmetic: bit-identical


def _lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_one_8_pair_backward_equals_eight_1_pair_backwards(world):
    """The accumulation invariant, where it lives: gradients of the mean loss over 8 pairs equal the sum of
    eight 1-pair losses divided by 8 (the trainer's `loss / grad_accum`)."""
    import functools

    from mmpo.batches import PairCollator
    from mmpo.config import LoraConfig, ModelConfig
    from mmpo.losses import LossTerm
    from mmpo.models import load_model
    from mmpo.records import read_pairs
    from mmpo.reference import adapter_reference
    from mmpo.trainer import PolicyLogps, preference_step

    model, processor = load_model(ModelConfig(path=str(world["model"])), LoraConfig(r=4), trainable=True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero, which would make every lora_A gradient zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    requires = {"reference"}
    loss_fn = functools.partial(preference_step, policy=PolicyLogps(model, requires, True),
                                reference=adapter_reference(model, requires, True),
                                terms=[LossTerm("dpo")], requires=requires)
    collate = PairCollator(processor, str(world["pairs"].parent), requires=frozenset(requires))
    recs = read_pairs(world["pairs"])[:8]

    loss, _ = loss_fn(collate(recs), 0.0)
    loss.backward()
    whole = _lora_grads(model)
    model.zero_grad(set_to_none=True)
    for rec in recs:
        one, _ = loss_fn(collate([rec]), 0.0)
        (one / 8).backward()
    accumulated = _lora_grads(model)

    assert whole.keys() == accumulated.keys() and len(whole) > 0
    for name in whole:  # relative to the tensor's norm: single near-zero entries carry cancellation noise
        error = (whole[name] - accumulated[name]).norm() / whole[name].norm()
        assert whole[name].norm() > 0 and error < 1e-5, (name, float(error))


def test_gradient_accumulation_1x8_logs_the_same_rows_as_8x1(world, tmp_path):
    """The loop accumulates the same loss and gradient norm, and steps once per 8 micro-batches: stepping per
    micro-batch would move step 2's loss far more than the measured 1e-7. (Weights are not compared: Adam's
    division by sqrt(v) turns rounding noise in near-zero gradients into updates of order lr.)"""
    train(_cfg(world, tmp_path / "a", "max_steps=3", "batch_size=8", "grad_accum=1"))
    train(_cfg(world, tmp_path / "b", "max_steps=3", "batch_size=1", "grad_accum=8"))
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        assert x["step"] == y["step"] and x["lr"] == y["lr"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    assert abs(a[2]["loss"] - a[0]["loss"]) > 1e-3  # the weights did move


def test_precomputed_reference_equals_adapter_reference(world, tmp_path):
    """Every cached entry equals the live adapters-off reference of that record, and training on the cache logs
    what training on the live reference logs."""
    from mmpo.batches import PairCollator
    from mmpo.config import LoraConfig, ModelConfig
    from mmpo.models import load_model
    from mmpo.records import read_pairs
    from mmpo.reference import adapter_reference, load_reference_cache

    train(_cfg(world, tmp_path / "live", "max_steps=3"))
    train(_cfg(world, tmp_path / "cached", "max_steps=3", "precompute_reference=true"))
    live, cached = read_metrics(tmp_path / "live"), read_metrics(tmp_path / "cached")
    assert len(live) == len(cached) == 3
    for x, y in zip(live, cached, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["rewards/margins"] == pytest.approx(y["rewards/margins"], rel=1e-4, abs=1e-6)
    caches = list(world["pairs"].parent.glob("pairs.jsonl.refcache/*.pt"))
    assert len(caches) == 1
    table = load_reference_cache(caches[0])
    model, processor = load_model(ModelConfig(path=str(world["model"])), LoraConfig(r=4), trainable=True)
    recs = read_pairs(world["pairs"])
    assert set(table) == {r.id for r in recs}
    reference = adapter_reference(model, {"reference"}, shared_prefix=False)  # the plain layout, one row each
    for rec in recs[:5]:
        want = reference(PairCollator(processor, str(world["pairs"].parent), requires=frozenset({"reference"}))([rec]))
        for key in ("chosen", "rejected"):
            assert table[rec.id][key] == pytest.approx(float(getattr(want, key)[0]), abs=1e-4), (rec.id, key)


def test_bad_records_error_or_are_counted(world, tmp_path):
    lines = world["pairs"].read_text().splitlines()
    bad = json.loads(lines[0])
    bad["media"] = ["img/missing.png"]
    path = world["pairs"].parent / "bad.jsonl"
    path.write_text("\n".join([json.dumps(bad)] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'media': missing media file"):
        train(_cfg(world, tmp_path / "e", "max_steps=1", f"data.train={path}"))
    train(_cfg(world, tmp_path / "s", "max_steps=1", f"data.train={path}", "data.on_bad_record=skip"))
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["skipped_records"] == 1

    with pytest.raises(ValueError, match=r"max_length"):
        train(_cfg(world, tmp_path / "l", "max_steps=1", "data.max_length=10"))
    with pytest.raises(ValueError, match=r"16 of 16 checked records are too long"):  # skip mode, nothing left
        train(_cfg(world, tmp_path / "l2", "max_steps=1", "data.max_length=10", "data.on_bad_record=skip"))

    empty = json.loads(lines[0])
    empty["chosen"] = " "
    path.write_text(json.dumps(empty) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'chosen': must not be empty"):
        train(_cfg(world, tmp_path / "x", "max_steps=1", f"data.train={path}"))


@pytest.mark.parametrize("loss", [
    "[{name: dadpo, params: {beta: 0.1}}]",
    "[{name: dpo}, {name: mdpo_conditional}, {name: mdpo_anchor}]",
    "[{name: ipo}, {name: sft, weight: 0.1, params: {target: gt}}]",
    "[{name: beta_dpo}]",
])
def test_loss_variants_train(world, tmp_path, loss):
    """Each variant learns the toy preference: the chosen answer's reward margin grows and the loss falls."""
    train(_cfg(world, tmp_path / "r", "max_steps=16", f"loss={loss}"))
    rows = read_metrics(tmp_path / "r")
    assert len(rows) == 16 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    first, last = rows[:4], rows[-4:]
    assert sum(r["rewards/margins"] for r in last) > sum(r["rewards/margins"] for r in first) + 0.1
    assert sum(r["loss"] for r in last) < sum(r["loss"] for r in first)


def test_pami_bag_trains_on_video(tmp_path_factory, tmp_path):
    import numpy as np
    from videos import make_frames, write_clip

    from mmpo.batches import PairCollator
    from mmpo.models import load_model
    from mmpo.records import AugSpec, PairRecord, read_pairs
    from mmpo.requirements import pair_logps

    root = tmp_path_factory.mktemp("pami")
    model = tiny_model("llava_next_video", root)
    (root / "v").mkdir()
    recs = []
    for i in range(4):
        write_clip(root / "v" / f"{i}.mp4", make_frames(T=8, H=64, W=64, seed=i))
        bag = (AugSpec("temporal_reverse"), AugSpec("frame_shuffle", {}, i), AugSpec("gaussian_noise", {"std": 60.0}, i))
        recs.append(PairRecord(id=f"v{i}", media=(f"v/{i}.mp4",), media_type="video", prompt="describe the video .",
                               chosen="a square moves", rejected="a square moves", rejected_bag=bag))
    write_jsonl(root / "pairs.jsonl", recs)
    cfg = load(TrainConfig, None, [f"model.path={model}", f"data.train={root / 'pairs.jsonl'}", f"output_dir={tmp_path}",
                                   "progress=false", "lora.r=4", "max_steps=8", "batch_size=2", "model.num_frames=4",
                                   "lr=5e-3", "loss=[{name: pami, params: {delta_min: 0.0}}]"])
    model, processor = load_model(cfg.model, cfg.lora, trainable=True)
    batch = PairCollator(processor, str(root), num_frames=4, requires=frozenset({"bag"}))(read_pairs(root / "pairs.jsonl"))

    def bag_gap() -> float:  # log p(chosen | clip) - mean_k log p(chosen | augmented clip_k): what PaMi widens
        with torch.no_grad():
            pol = pair_logps(model, batch, {"bag"}, shared_prefix=True)
        return float((pol.chosen - pol.extra["bag"].mean(1)).mean())

    before = bag_gap()
    train(cfg, model=model, processor=processor)
    rows = read_metrics(tmp_path)
    assert all(np.isfinite(r["loss"]) for r in rows) and "pami/tau" in rows[0]
    assert bag_gap() > before + 0.05


def test_sft_stage_lowers_nll(world, tmp_path):
    train(_cfg(world, tmp_path / "sft", "stage=sft", f"data.train={world['sft']}", "max_steps=15", "lr=1e-2"))
    rows = read_metrics(tmp_path / "sft")
    assert rows[-1]["sft/nll"] < rows[0]["sft/nll"] - 0.5
    shutil.rmtree(tmp_path / "sft")


def test_pami_distances_from_the_step_logits_equal_a_separate_pass(world):
    """The JS distances reuse the policy's own answer logits; a separate no-grad pass gives the same numbers."""
    import dataclasses

    from mmpo.batches import PairCollator
    from mmpo.config import LoraConfig, ModelConfig
    from mmpo.logprobs import answer_logits
    from mmpo.models import load_model
    from mmpo.pami import js_divergence
    from mmpo.records import AugSpec, read_pairs
    from mmpo.requirements import pair_logps

    model, processor = load_model(ModelConfig(path=str(world["model"])), LoraConfig(r=4), trainable=True)
    bag = (AugSpec("mdpo_crop", {}, 1), AugSpec("gaussian_noise", {"std": 80.0}, 2))
    recs = [dataclasses.replace(r, rejected_bag=bag) for r in read_pairs(world["pairs"])[:3]]
    batch = PairCollator(processor, str(world["pairs"].parent), requires=frozenset({"bag", "reference"}))(recs)
    pol = pair_logps(model, batch, {"bag", "reference"}, shared_prefix=True, js_top_k=0)
    mask = batch.chosen["attention_mask"]
    ours = pol.extra["bag_distance"]
    with torch.no_grad():
        base = answer_logits(model, batch.prompt, batch.chosen)
        separate = torch.stack([js_divergence(base, answer_logits(model, p, batch.chosen), mask)
                                for p in batch.extra["bag"]["prompts"]], 1)
    assert ours.shape == (3, 2) and (ours > 0).all()
    assert torch.allclose(ours, separate, atol=1e-5)


# -- fail loudly, lose nothing -------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("lr=.inf", r"lr: expected a finite number"),
    ("loss=[{name: dpo, params: {beta: .nan}}]", r"beta: expected a finite number"),
    ("lr=0", r"lr: expected >0"),
])
def test_non_finite_or_out_of_range_settings_are_refused_by_validate_and_train(world, tmp_path, override, message):
    from mmpo.app.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {world['model']}\ndata:\n  train: {world['pairs']}\n")
    with pytest.raises(ValueError, match=message):
        load(TrainConfig, cfg, [override])
    assert main(["validate", str(cfg)]) == 0
    (tmp_path / "train").mkdir()
    bad = tmp_path / "train" / "bad.yaml"  # validate picks the schema by folder name
    bad.write_text(cfg.read_text() + "\n".join(override.split("=", 1)[0:1]) + ": " + override.split("=", 1)[1] + "\n")
    assert main(["validate", str(bad)]) == 1


@pytest.mark.parametrize("overrides", [
    ["loss=[{name: dpo, params: {beta: 1.0e+40}}]"],
    ["loss=[{name: ipo, params: {beta: 1.0e-30}}]"],
    ["lr=1.0e+6", "max_grad_norm=0"],
])
def test_diverging_runs_stop_with_an_error_and_save_nothing_non_finite(world, tmp_path, overrides, capsys):
    from mmpo.app.cli import main

    args = [f"model.path={world['model']}", f"data.train={world['pairs']}", f"output_dir={tmp_path / 'run'}",
            "progress=false", "lora.r=4", "max_steps=8", "save_every=1", *overrides]
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert "consecutive steps with a non-finite loss or gradient" in err and "Likely cause" in err
    assert ("beta=[1e+40]" if "1.0e+40" in overrides[0] else "beta=[1e-30]" if "1.0e-30" in overrides[0]
            else "beta=[0.1]") in err  # the beta of the terms that ran
    assert not (tmp_path / "run" / "adapter").exists()
    from mmpo.checkpoint import latest_checkpoint
    last = latest_checkpoint(tmp_path / "run")
    if last is not None:  # any checkpoint written holds finite numbers only
        state = torch.load(last / "state.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_a_rerun_with_another_config_is_refused_unless_asked(world, tmp_path):
    train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=2"))
    with pytest.raises(ValueError, match=r"another config \(lr: 0.005 -> 0.001"):
        train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=2", "lr=1e-3"))
    assert load(TrainConfig, tmp_path / "run" / "config.yaml").lr == 5e-3  # the config that ran is kept
    train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=1", "log_every=2"))  # cadence only: allowed
    train(_cfg(world, tmp_path / "run", "max_steps=6", "save_every=2", "allow_config_change=true"))
    assert load(TrainConfig, tmp_path / "run" / "config.yaml").max_steps == 6
    assert [p.name for p in (tmp_path / "run").glob("config.before-*.yaml")]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 6


def test_a_run_that_learned_nothing_says_so(world, tmp_path, caplog):
    """PaMi on a model whose every bag came out empty trained 'loss 0.0000' for its whole run without a word."""
    with caplog.at_level("WARNING", logger="mmpo"):
        train(_cfg(world, tmp_path / "zero", "max_steps=2", "loss=[{name: dpo, weight: 0.0}]"))
    assert "every logged step had a zero gradient (grad_norm 0)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="mmpo"):
        train(_cfg(world, tmp_path / "some", "max_steps=2"))
    assert "zero gradient" not in caplog.text


def test_a_resume_with_other_loss_terms_starts_their_states_fresh(world, tmp_path, caplog):
    """allow_config_change lets `loss:` change; zip(strict=True) over the saved states then failed unexplained."""
    train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=2"))
    (tmp_path / "run" / "summary.json").unlink()  # as if stopped after the step-2 checkpoint
    with caplog.at_level("WARNING", logger="mmpo"):
        train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=2", "allow_config_change=true",
                   "loss=[{name: dpo}, {name: sft, weight: 0.1}]"))
    assert "holds the states of 1 loss terms, the config has 2: their running states start fresh" in caplog.text
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4


def test_rerunning_a_finished_run_trains_nothing(world, tmp_path, caplog):
    """Without checkpoints (save_every 0) a rerun of a finished command once trained again from step 0 over it."""
    train(_cfg(world, tmp_path / "run", "max_steps=3"))
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in [*run.glob("*.json*"), *(run / "adapter").iterdir()]}
    with caplog.at_level("WARNING", logger="mmpo"):
        assert train(_cfg(world, run, "max_steps=3", "log_every=3")) == run
    assert "holds this run, finished (summary.json): nothing to train" in caplog.text
    assert {p.name: p.read_bytes() for p in [*run.glob("*.json*"), *(run / "adapter").iterdir()]} == before
    with pytest.raises(ValueError, match=r"another config \(max_steps: 3 -> 4"):  # a longer run is not this one
        train(_cfg(world, run, "max_steps=4"))
    with caplog.at_level("WARNING", logger="mmpo"):  # asked for: said to start over, having no checkpoint
        train(_cfg(world, run, "max_steps=4", "allow_config_change=true"))
    assert "changed config (max_steps: 3 -> 4), from step 0: it kept no checkpoint (save_every)" in caplog.text


class _Payload:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_caches_and_checkpoints_holding_pickled_objects_are_refused(world, tmp_path, capsys):
    from mmpo.checkpoint import latest_checkpoint
    from mmpo.reference import load_reference_cache

    cache = tmp_path / "evil.pt"
    torch.save({"r1": {"chosen": _Payload()}}, cache)
    with pytest.raises(ValueError, match="refusing to load a reference cache"):
        load_reference_cache(cache)
    train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=2"))
    state = latest_checkpoint(tmp_path / "run") / "state.pt"
    torch.save({"step": 2, "extra": _Payload()}, state)
    (tmp_path / "run" / "summary.json").unlink()  # as if stopped after that checkpoint: a rerun resumes from it
    with pytest.raises(ValueError, match="refusing to load a checkpoint"):
        train(_cfg(world, tmp_path / "run", "max_steps=4", "save_every=2"))
    assert "this ran code" not in capsys.readouterr().out


@pytest.mark.parametrize("loss, field", [
    ("[{name: dadpo}]", "scores.delta"),
    ("[{name: dpo}, {name: sft, weight: 0.1, params: {target: gt}}]", "meta.gt"),
])
def test_a_term_that_needs_a_field_the_data_lacks_is_an_error_naming_the_record(world, tmp_path, loss, field):
    """No silent defaults: DA-DPO without scores.delta is not DPO with delta 0, and sft(target=gt) without a
    ground truth is not NLL on the chosen answer."""
    lines = world["pairs"].read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[5].pop("scores") if field == "scores.delta" else rows[5]["meta"].pop("gt")
    path = world["pairs"].parent / "lacking.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"lacking.jsonl:6: a loss term needs {field}"):
        train(_cfg(world, tmp_path / "run", "max_steps=4", f"data.train={path}", f"loss={loss}", "data.shuffle=false"))


def test_non_finite_weights_are_never_saved(world, tmp_path, monkeypatch):
    """A NaN that reaches a weight (here put there by the hook, as an overflow would) stops the run at the next
    save, before the checkpoint is written; the run's trackers are still closed."""
    from mmpo.metrics import MetricLogger
    from mmpo.trainer import TrainingDiverged

    closed = []
    monkeypatch.setattr(MetricLogger, "close", lambda self: closed.append(self))

    def poison(model, processor, step):
        if step == 2:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))
        return {}

    with pytest.raises(TrainingDiverged, match="checkpoint at step 2: trainable tensors hold non-finite values"):
        train(_cfg(world, tmp_path / "run", "max_steps=6", "save_every=2", "eval_every=1"), eval_hook=poison)
    assert not (tmp_path / "run" / "checkpoints" / "step-2").exists()
    assert not (tmp_path / "run" / "adapter").exists()
    assert len(closed) == 1
