"""Tests for mmpo.requirements: each requirement's pieces agree with the losses and the batch, without a model."""

import dataclasses
import types

import pytest
import torch

from mmpo.losses import LOSSES, LossInputs, LossTerm
from mmpo.records import PairRecord
from mmpo.requirements import REQUIREMENTS, Collating, PairLogps, needed, reference_pass


def test_every_requirement_fills_only_lossinputs_fields_and_every_loss_requires_known_ones():
    fields = {f.name for f in dataclasses.fields(LossInputs)}
    for req in REQUIREMENTS.values():
        assert set(req.fields) <= fields, req.name
    for name in LOSSES:
        assert LossTerm(name).loss.requires <= REQUIREMENTS.keys(), name
    assert LossTerm("sft", params={"target": "gt"}).loss.requires == {"gt"}


def test_needed_keeps_the_forward_order_and_adds_what_the_data_asks_for():
    assert [r.name for r in needed({"bag", "corrupt", "reference"})] == ["reference", "rejected_media", "corrupt",
                                                                         "bag"]
    assert [r.name for r in needed(set())] == ["rejected_media"]


def test_a_reference_pass_leaves_out_what_only_the_policy_pass_fills_from():
    """The ground truth's log-probs (mrDPO) and WPO's weights are read from the policy's pass alone: their fill
    works without a reference, so the reference (and a distillation's teacher) need not compute them."""
    assert reference_pass({"reference", "gt", "wpo", "corrupt", "bag"}) == {"reference", "corrupt", "bag"}
    policy = PairLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([3.0]), torch.tensor([4.0]),
                       {"gt": torch.tensor([-3.0]), "gt_tokens": torch.tensor([5.0]),
                        "chosen_wpo": torch.tensor([-0.5]), "rejected_wpo": torch.tensor([-1.5])})
    batch = types.SimpleNamespace(weight=torch.ones(1))
    for req in REQUIREMENTS.values():
        if req.policy_only:
            assert set(req.fill(batch, policy, None)) == set(req.fields), req.name


def test_the_reference_cache_rows_round_trip():
    out = PairLogps(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([3.0]), torch.tensor([4.0]),
                    {"corrupt": torch.tensor([-5.0])})
    table = out.table()
    assert sorted(table) == ["chosen", "chosen_tokens", "corrupt", "rejected", "rejected_tokens"]  # the old cache keys
    back = PairLogps.from_table(table)
    assert back.chosen.item() == -1.0 and back.rejected_tokens.item() == 4.0 and back.extra["corrupt"].item() == -5.0


def _collating(recs):
    return Collating(processor=None, recs=recs, media=[None] * len(recs), prompts=[r.prompt for r in recs],
                     media_type="image", load=lambda r, rels: None)


def _pair(i, **fields):
    return PairRecord(id=f"p{i}", media=("a.png",), media_type="image", prompt="q", chosen="a", rejected="b",
                      **fields)


def test_delta_collates_the_score_gap_and_fills_score_delta():
    delta = REQUIREMENTS["delta"]
    value = delta.collate(_collating([_pair(0, scores={"delta": 0.5}), _pair(1, scores={"delta": -1.0})]))
    assert value.tolist() == [0.5, -1.0]
    batch = type("B", (), {"extra": {"delta": value}})()
    assert delta.fill(batch, None, None) == {"score_delta": value}


def test_a_record_without_what_a_loss_requires_is_named():
    with pytest.raises(ValueError, match=r"record p1: a loss term needs scores.delta"):
        REQUIREMENTS["delta"].collate(_collating([_pair(0, scores={"delta": 0.5}), _pair(1)]))
    with pytest.raises(ValueError, match=r"record p0: a loss term needs meta.gt"):
        REQUIREMENTS["gt"].collate(_collating([_pair(0)]))


def test_rejected_media_adds_nothing_when_no_pair_names_any():
    assert REQUIREMENTS["rejected_media"].collate(_collating([_pair(0), _pair(1)])) is None
