"""What a loss may need beyond a plain pair, one object per need, and `pair_logps`, the forward that serves them.

A loss names its needs in `requires` ("reference", "delta", "gt", "corrupt", "bag"); the trainer adds "wpo" to the
policy's pass under `use_weighting`, and "rejected_media" is asked for by the data (a pair that names other media
for its rejected answer). Each need is one `Requirement` here, owning its three pieces:

    collate(Collating) -> value | None      what the collator adds to the batch (`PairBatch.extra[name]`)
    forward(model, batch, base, js_top_k)   what `pair_logps` measures for it (`PairLogps.extra`)
    fill(batch, policy, reference)          the `mmpo.losses.LossInputs` fields it sets (its `fields`)

So a loss needing a new input is one new Requirement (and its test), its fields declared on `LossInputs`; the
collator, `pair_logps` and the trainer's step loop over `REQUIREMENTS` and need no change.

Worked example, loss dpo + mdpo_conditional (requires {"reference", "corrupt"}), two image pairs:
    collate: batch.extra = {"corrupt": encode_prompts(<the same prompts, 1-20% crops of the images>)}
    policy pass: PairLogps(chosen [2], rejected [2], chosen_tokens [2], rejected_tokens [2],
                           extra={"corrupt": [2]})      (one packed forward + one plain forward on the crops)
    fill: ref_chosen, ref_rejected (Reference); policy_corrupt, ref_corrupt (Corrupt)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from mmpo.logprobs import packed_logps, plain_logps, wpo_logps
from mmpo.media import augment
from mmpo.models import encode_answers, encode_prompts
from mmpo.pami import clip_distance, encode_bag
from mmpo.records import AugSpec, PairRecord


@dataclass(frozen=True)
class Collating:
    """What a requirement's collate piece sees: the batch's records, their decoded media and prompts."""

    processor: Any
    recs: list[PairRecord]
    media: list  # one decoded item (or list of images) per record
    prompts: list[str]
    media_type: str  # "image" | "video" (one per batch)
    load: Callable[[PairRecord, list[str]], Any]  # (record, relative paths) -> decoded media, as `media` was


@dataclass
class Answers:
    """One answer set's log-probs from a forward: sums and token counts [B] (+ the predicting logits, if kept)."""

    logps: torch.Tensor
    tokens: torch.Tensor
    logits: torch.Tensor | None = None  # [B, L, V], kept when a requirement reads them (WPO, PaMi's distances)


@dataclass
class PairLogps:
    """Every answer log-prob one model (policy or reference) gives a `PairBatch`: what `pair_logps` returns."""

    chosen: torch.Tensor  # [B] log pi(y_w | x), summed over answer tokens
    rejected: torch.Tensor  # [B] log pi(y_l | x)
    chosen_tokens: torch.Tensor  # [B] answer-token counts
    rejected_tokens: torch.Tensor  # [B]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # what the requirements measured, by their names

    def table(self) -> dict[str, torch.Tensor]:
        """Every tensor by name (the reference cache stores these rows)."""
        return {"chosen": self.chosen, "rejected": self.rejected, "chosen_tokens": self.chosen_tokens,
                "rejected_tokens": self.rejected_tokens, **self.extra}

    @classmethod
    def from_table(cls, table: dict[str, torch.Tensor]) -> PairLogps:
        """The inverse of `table`."""
        rest = dict(table)
        base = {k: rest.pop(k) for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")}
        return cls(**base, extra=rest)


class Requirement:
    """One need of a loss term; the defaults do nothing, so each requirement spells out only its own pieces."""

    name: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()  # the LossInputs fields `fill` sets (a loss requiring it finds them set)
    by_data: ClassVar[bool] = False  # collated whenever the data has it, whatever the losses require
    policy_only: ClassVar[bool] = False  # `fill` reads only the policy's pass: a reference pass need not compute it

    def collate(self, c: Collating) -> Any:
        """The value the collator stores at `batch.extra[self.name]` (None: nothing to add)."""
        return None

    def answers(self, batch) -> list[dict]:
        """Extra answers under the pair's own prompt, packed into the chosen/rejected forward."""
        return []

    def keeps_logits(self, js_top_k: int | None) -> bool:
        """Whether `forward` reads the chosen/rejected logits (`Answers.logits`)."""
        return False

    def forward(self, model, batch, base: dict[str, Answers], js_top_k: int | None) -> dict[str, torch.Tensor]:
        """What this model's pass measures for the requirement: `PairLogps.extra` entries."""
        return {}

    def fill(self, batch, policy: PairLogps, reference: PairLogps | None) -> dict[str, Any]:
        """The LossInputs fields it sets, by name."""
        return {}

    def metrics(self, policy: PairLogps) -> dict[str, float]:
        """What the step logs for it."""
        return {}


class Reference(Requirement):
    """The reference policy's log-probs of both answers (the trainer runs its pass only when a loss requires it)."""

    name, fields = "reference", ("ref_chosen", "ref_rejected")

    def fill(self, batch, policy, reference):
        return {"ref_chosen": reference.chosen, "ref_rejected": reference.rejected}


class Delta(Requirement):
    """The pair's score gap `scores.delta` from the data (DA-DPO, CLIP-DPO); a record without one is an error."""

    name, fields = "delta", ("score_delta",)

    def collate(self, c):
        deltas = required_field(c.recs, "scores.delta", lambda r: r.scores.get("delta"),
                                "the score gap `mmpo build difficulty` or `self_qa` with a CLIP model writes")
        return torch.tensor(deltas, dtype=torch.float32)

    def fill(self, batch, policy, reference):
        return {"score_delta": batch.extra["delta"]}


class RejectedMedia(Requirement):
    """Pairs whose rejected answer goes with other media (`rejected_media`): the rejected side's prompts, encoded
    with those media. Asked for by the data; the chosen/rejected forward then runs unpacked (two prompts)."""

    name, by_data = "rejected_media", True

    def collate(self, c):
        if not any(r.rejected_media for r in c.recs):
            return None
        rej = [c.load(r, r.rejected_media) if r.rejected_media else m for r, m in zip(c.recs, c.media)]
        return encode_prompts(c.processor, c.prompts, rej, c.media_type)


class GroundTruth(Requirement):
    """The ground-truth answer `meta.gt` (mrDPO's guidance term), scored in the same forward as the pair."""

    name, fields, policy_only = "gt", ("gt_logps", "gt_tokens"), True

    def collate(self, c):
        gts = required_field(c.recs, "meta.gt", lambda r: r.meta.get("gt") or None, "a ground-truth answer")
        return encode_answers(c.processor, [str(g) for g in gts])

    def answers(self, batch):
        return [batch.extra["gt"]]

    def forward(self, model, batch, base, js_top_k):
        return {"gt": base["gt"].logps, "gt_tokens": base["gt"].tokens}

    def fill(self, batch, policy, reference):
        return {"gt_logps": policy.extra["gt"], "gt_tokens": policy.extra["gt_tokens"]}


def wpo_weight(chosen_wpo: torch.Tensor, rejected_wpo: torch.Tensor) -> torch.Tensor:
    """WPO (Zhou et al., "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv 2406.11827, Eq. 2;
    TRL `use_weighting`): a pair's weight w = exp(a_w) * exp(a_l), where a is `mmpo.logprobs.wpo_logps` of each
    answer under the policy (mean over tokens of log p(y_t) - log sum_v p(v)^2), detached. It is multiplied into
    `LossInputs.weight`, so it scales every term's per-pair loss, as TRL's multiplies each per-sequence loss.
    TRL's sft is one batch value: mmpo's batch-token sft gets mean(w) times it, what TRL's code means (TRL 1.16
    itself raises there, multiplying in place into an expanded tensor); the per-pair sft gets w_i. Sorting losses
    (aot) refuse it, as TRL does.
    """
    return torch.exp(chosen_wpo.detach()) * torch.exp(rejected_wpo.detach())


class WPO(Requirement):
    """WPO's pair weights (`use_weighting`), from the logits the policy's pass computes anyway (policy pass only)."""

    name, fields, policy_only = "wpo", ("weight",), True

    def keeps_logits(self, js_top_k):
        return True  # backward holds them until the step ends anyway

    def forward(self, model, batch, base, js_top_k):
        out = {}
        for key, answer in (("chosen", batch.chosen), ("rejected", batch.rejected)):
            logits = base[key].logits
            out[f"{key}_wpo"] = wpo_logps(logits, answer["input_ids"].to(logits.device),
                                          answer["attention_mask"].to(logits.device))
        return out

    def fill(self, batch, policy, reference):
        weight = wpo_weight(policy.extra["chosen_wpo"], policy.extra["rejected_wpo"])
        return {"weight": batch.weight * weight.to(batch.weight.dtype)}

    def metrics(self, policy):
        return {"wpo/weight": wpo_weight(policy.extra["chosen_wpo"], policy.extra["rejected_wpo"]).mean().item()}


def default_corruption(record: PairRecord) -> AugSpec:
    """mDPO's corruption: keep 1-20% of the image (RandomResizedCrop, luka-group/mDPO); seeded by the id."""
    # sha256, not hash(): str hashes are salted per process, which would make the corruption differ between
    # runs and DataLoader workers (and break exact resume).
    seed = int(hashlib.sha256(record.id.encode()).hexdigest()[:8], 16)
    return AugSpec("mdpo_crop" if record.media_type == "image" else "spatial_crop", {}, seed)


def augment_each(media, spec: AugSpec):
    """`augment` for one media item, or for each image of a multi-image record (the same spec on every image)."""
    return [augment(m, spec) for m in media] if isinstance(media, list) else augment(media, spec)


class Corrupt(Requirement):
    """The chosen answer under corrupted media (mDPO's conditional term): the prompts with a crop of the media, or
    with the pair's `rejected_media` where it names some (a counterfactual image/clip is the corruption)."""

    name, fields = "corrupt", ("policy_corrupt", "ref_corrupt")

    def collate(self, c):
        cor = [c.load(r, r.rejected_media) if r.rejected_media else augment_each(m, default_corruption(r))
               for r, m in zip(c.recs, c.media)]
        return encode_prompts(c.processor, c.prompts, cor, c.media_type)

    def forward(self, model, batch, base, js_top_k):
        return {"corrupt": plain_logps(model, batch.extra["corrupt"], batch.chosen)[0]}

    def fill(self, batch, policy, reference):
        return {"policy_corrupt": policy.extra["corrupt"], "ref_corrupt": reference.extra["corrupt"]}


class Bag(Requirement):
    """PaMi-VDPO's bag: the chosen answer under each of K augmented clips (`mmpo.pami.encode_bag`), and, in the
    policy's pass (`js_top_k` set: the config's `pami.js_top_k`), each clip's prompt-aware distance from the
    original, measured on logits that pass computes anyway (`mmpo.pami.clip_distance`)."""

    name, fields = "bag", ("bag_policy", "bag_ref", "bag_distance")

    def collate(self, c):
        return encode_bag(c.processor, c.recs, c.media, c.prompts, c.media_type)  # {"prompts", "mask"}

    def keeps_logits(self, js_top_k):
        return js_top_k is not None

    def forward(self, model, batch, base, js_top_k):
        distances = js_top_k is not None
        logps, dist = [], []
        for prompt in batch.extra["bag"]["prompts"]:
            clip = plain_logps(model, prompt, batch.chosen, keep_logits=distances)
            logps.append(clip[0])
            if distances:
                dist.append(clip_distance(base["chosen"].logits, clip[2], batch.chosen["attention_mask"], js_top_k))
        return {"bag": torch.stack(logps, 1), **({"bag_distance": torch.stack(dist, 1)} if distances else {})}

    def fill(self, batch, policy, reference):
        return {"bag_policy": policy.extra["bag"], "bag_ref": reference.extra["bag"],
                "bag_mask": batch.extra["bag"]["mask"], "bag_distance": policy.extra.get("bag_distance")}


# name -> requirement, in the order their forwards run (an order kept from the first version: dropout draws
# follow it, so reordering changes a run's numbers).
REQUIREMENTS: dict[str, Requirement] = {r.name: r for r in (Reference(), Delta(), RejectedMedia(), GroundTruth(),
                                                           WPO(), Corrupt(), Bag())}


def reference_pass(requires: set) -> set:
    """What a reference (or teacher) pass computes: `requires` without the policy-only requirements (scoring the
    ground truth under the reference added a packed segment, or a whole forward, to every step for nothing)."""
    return {name for name in requires if not (name in REQUIREMENTS and REQUIREMENTS[name].policy_only)}


def needed(requires) -> list[Requirement]:
    """The requirements of a set of names, in `REQUIREMENTS` order, with those the data asks for."""
    return [r for name, r in REQUIREMENTS.items() if name in requires or r.by_data]


def required_field(recs: list, name: str, get, need: str) -> list:
    """`get(record)` for every record, or a ValueError naming the first record that lacks it."""
    values = [get(r) for r in recs]
    missing = [r for r, v in zip(recs, values) if v is None]
    if missing:
        r = missing[0]
        raise ValueError(f"{r.where or 'record ' + r.id}: a loss term needs {name} ({need}), and this record has none")
    return values


def pair_logps(model, batch, requires, shared_prefix: bool, js_top_k: int | None = None) -> PairLogps:
    """All answer log-probs a step needs from one model (policy or reference), for a `mmpo.batches.PairBatch`.

    Chosen and rejected (and the requirements' extra answers, e.g. the ground truth) share the media and prompt,
    so with `shared_prefix` they are one packed forward (`packed_logps`); pairs with rejected media, or
    shared_prefix false, run one plain forward per answer set. Then each requirement's own forward (corrupted
    media, the bag's clips) in `REQUIREMENTS` order. The policy's pass of a PaMi step gives `js_top_k` (the
    config's `pami.js_top_k`) and also gets the bag's distances; the reference's gives None.

    Returns:
        `PairLogps`; `extra` holds what each requirement measured, under the names its `forward` gives.
    """
    needs = [r for r in REQUIREMENTS.values() if r.name in requires]
    keep = any(r.keeps_logits(js_top_k) for r in needs)
    extra = {r.name: a for r in needs for a in r.answers(batch)}  # at most one extra answer set per requirement
    rejected_prompt = batch.extra.get("rejected_media")
    if shared_prefix and rejected_prompt is None:
        outs = packed_logps(model, batch.prompt, [batch.chosen, batch.rejected, *extra.values()], keep_logits=keep)
    else:
        outs = [plain_logps(model, batch.prompt, batch.chosen, keep_logits=keep),
                plain_logps(model, rejected_prompt or batch.prompt, batch.rejected, keep_logits=keep)]
        outs += [plain_logps(model, batch.prompt, a) for a in extra.values()]
    base = {key: Answers(*out) for key, out in zip(["chosen", "rejected", *extra], outs, strict=True)}
    measured = {k: v for r in needs for k, v in r.forward(model, batch, base, js_top_k).items()}
    return PairLogps(base["chosen"].logps, base["rejected"].logps, base["chosen"].tokens, base["rejected"].tokens,
                     measured)
