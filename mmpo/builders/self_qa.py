"""Self-QA builder (VideoSAVi, docs/METHODS.md §2): the model questions, answers and judges itself.

Preset `videosavi_v1` [paper v1; selection rules RECONSTRUCTION]: per video/image the model writes
questions from What/Why/How/temporal templates, samples one answer per temperature, scores each
answer with a rubric prompt (relevance, accuracy, temporal grounding, clarity; 1-10 each), and CLIP
scores each answer against the frames. Pair: chosen = best judged, rejected = worst judged, kept when
the judge gap is >= `min_gap` AND the CLIP order agrees (s_clip(y_w) >= s_clip(y_l)).
`scores["delta"] = s_clip(y_w) - s_clip(y_l)` feeds the CLIP-adjusted DPO loss.

Preset `critique_refine` [paper v2/v3]: initial answer a0, self-critique c, refined answer a1;
pair (a1 > a0).

Model calls are batched across items: a block of `items_per_block(cfg)` consecutive inputs (by media type)
is questioned in one call, answered in one call per temperature and judged in calls of `batch_size` prompts.
Blocks are cut by input position, so a resumed or sharded build (`mmpo.builders.shards`) runs every call with
the same prompts, padding and seed as one uninterrupted process.

The generator is a plain callable `fn(prompts, media, temperature, seed) -> list[str]` (one media item per
prompt) and the judge a `mmpo.builders.judging.Judge` (`rubric`: the model writes scores; `yes_no`: its yes/no
logits), so tests can run the real tiny model as generator with a fake judge (`build(..., judge=...)`). A
question writer `fn(input_position, media, word) -> list[str]` may replace the model's own question writing
(`build(..., ask=...)`; the demo's tiny model fills question templates from its own caption because it cannot
write questions), and a CLIP check `fn(media, question, answers) -> scores` may replace the default one, which
scores each bare answer against the frames (`build(..., clip=...)`; the demo's order-aware check scores a
statement built from the question and the answer against the frames in order, `demo.video_models`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mmpo.builders import shards
from mmpo.builders.common import BadInput, ResumableWriter, finish, progress
from mmpo.builders.judging import JUDGES, Judge, rubric_judge, yes_no_judge
from mmpo.config import ModelConfig
from mmpo.formats import read_set
from mmpo.media import MediaError, load_media
from mmpo.records import PairRecord, SFTRecord, default_media_root, pair_id

PRESETS = ("videosavi_v1", "critique_refine")
# kind -> (instruction that asks the model for a question, fallback question if it writes nothing)
QUESTION_TEMPLATES = {
    "what": ("Write one question starting with What about this {m}.", "What is shown in the {m} ?"),
    "why": ("Write one question starting with Why about this {m}.", "Why does the scene in the {m} look this way ?"),
    "how": ("Write one question starting with How about this {m}.", "How do the objects in the {m} move ?"),
    "temporal": ("Write one question about what happens first and what happens after in this {m}.",
                 "What happens first and what happens after in the {m} ?"),
}
Ask = Callable[[int, object, str], list]  # (input position, media, "video"/"image") -> questions
CRITIQUE_PROMPT = ("Question: {q} Answer: {a} Check the answer against the {m}: list factual errors, "
                   "hallucinated objects or events, and omissions.")
REFINE_PROMPT = "Question: {q} First answer: {a} Critique: {c} Write a corrected answer to the question."

Generate = Callable[[list, list, float, int], list]
ClipCheck = Callable[[object, str, list], list]  # (media, question, answers) -> s_clip per answer (higher = better)


@dataclass
class SelfQAConfig:
    in_sft: str = ""  # SFT JSONL whose media are questioned (prompt/answer unused; ids drive resume)
    media_root: str = ""  # folder the media paths are relative to ("" = from a manifest.json beside the input, else its folder)
    out_dir: str = "data/self_qa"  # output folder: pairs.jsonl, manifest.json, done.txt (resumable)
    seed: int = 0  # sampling seed (each item and temperature derive their own)
    model: ModelConfig = field(default_factory=ModelConfig)  # the model that asks, answers and judges
    preset: str = "videosavi_v1"  # videosavi_v1 (sample + judge) | critique_refine (v2: a1 > a0)
    question_kinds: list[str] = field(default_factory=lambda: ["what", "why", "how", "temporal"])  # templates
    questions_per_item: int = 2  # questions asked per video/image (template kinds in rotation)
    temperatures: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8, 1.0])  # one answer each (v1)
    max_new_tokens: int = 48  # answer / question / critique length cap
    judge: str = "rubric"  # rubric (writes 4 scores, VideoSAVi v1) | yes_no (P(yes) to "is this answer correct?")
    judge_max_new_tokens: int = 48  # rubric judge output length cap
    min_gap: float = 1.0  # minimum judge-score gap between chosen and rejected (METHODS §2)
    clip_model: str = ""  # open_clip checkpoint for the CLIP check ("" = off: no order check, no delta)
    clip_floor: float = -1.0  # optional absolute floor s_clip(y_w) >= clip_floor (-1 = off)
    fresh: bool = False  # discard an earlier partial build instead of resuming it
    progress: bool = True  # tqdm progress bar
    batch_size: int = 8  # prompts per model call; batch_size // questions_per_item items (at least 1) are questioned together
    shard: str = ""  # build shard i/N of the input (whole blocks) into out_dir/shards/i-of-N ("" = all; launched: one per rank)
    merge: bool = False  # write out_dir/pairs.jsonl + manifest.json from the finished shards, as one process would


# -- pipeline -------------------------------------------------------------------------------------

def model_generator(model, processor, media_type: str, max_new_tokens: int, batch_size: int = 8) -> Generate:
    """Wrap `mmpo.models.generate_answers` as a `fn(prompts, media, temperature, seed) -> list[str]`, in calls of
    at most `batch_size` prompts (bounded memory: each prompt carries its own image or video)."""
    from mmpo.models import generate_answers

    def generate(prompts: list, media: list, temperature: float, seed: int) -> list:
        out = []
        for s in range(0, len(prompts), batch_size):
            out += [o[0] for o in generate_answers(model, processor, prompts[s:s + batch_size], media[s:s + batch_size],
                                                   media_type, num_samples=1, temperature=temperature,
                                                   max_new_tokens=max_new_tokens, seed=seed + s)]
        return out

    return generate


def items_per_block(cfg: SelfQAConfig) -> int:
    """Items questioned together: enough that one question call holds about `batch_size` prompts."""
    return max(1, cfg.batch_size // cfg.questions_per_item)


def group_seed(seed: int, position: int) -> int:
    """Sampling seed of the group of items starting at input `position`: a function of the input, never of
    the shard or of what a resumed build has left to do."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


def ask_questions(cfg: SelfQAConfig, positions: list[int], media: list, word: str,
                  generate: Generate) -> tuple[list[str], list[int], list[int]]:
    """Questions for a group of items in one greedy call, with the template's fallback when the model writes nothing.

    Args:
        cfg: builder config (question_kinds, questions_per_item, seed).
        positions: the items' input positions (they rotate the template kinds).
        media: the items' decoded media.
        word: "video" or "image".
        generate: the generator.

    Returns:
        (questions, the owning item's index in the group per question, fallbacks per item).
    """
    kinds = [(k, cfg.question_kinds[(pos + j) % len(cfg.question_kinds)])
             for k, pos in enumerate(positions) for j in range(cfg.questions_per_item)]
    asked = generate([QUESTION_TEMPLATES[kind][0].format(m=word) for _, kind in kinds],
                     [media[k] for k, _ in kinds], 0.0, cfg.seed)
    questions, fallbacks = [], [0] * len(positions)
    for (k, kind), q in zip(kinds, asked):
        if not q.strip():
            q, fallbacks[k] = QUESTION_TEMPLATES[kind][1].format(m=word), fallbacks[k] + 1
        questions.append(q.strip())
    return questions, [k for k, _ in kinds], fallbacks


def select_pair(answers: list[str], judged: list, clip: list[float] | None, cfg: SelfQAConfig) -> tuple[dict | None, str]:
    """VideoSAVi v1 selection [RECONSTRUCTION]: best vs worst judged, gap >= min_gap, CLIP order agrees.

    `judged` holds S_judge per answer (None = unusable judgement).

    Returns:
        (pair dict with chosen/rejected/scores, "") or (None, reason counted in the manifest).
    """
    valid = [i for i, j in enumerate(judged) if j is not None and answers[i].strip()]
    if len(valid) < 2:
        return None, "too_few_judged"
    s = {i: judged[i] for i in valid}
    w, lo = max(valid, key=lambda i: s[i]), min(valid, key=lambda i: s[i])
    if s[w] - s[lo] < cfg.min_gap or answers[w] == answers[lo]:
        return None, "judge_gap_small"
    scores = {"judge_chosen": s[w], "judge_rejected": s[lo]}
    if clip is not None:
        if clip[w] < clip[lo]:
            return None, "clip_disagrees"
        if cfg.clip_floor > -1 and clip[w] < cfg.clip_floor:
            return None, "clip_below_floor"
        scores.update(clip_chosen=clip[w], clip_rejected=clip[lo], delta=clip[w] - clip[lo])
    return {"chosen": answers[w], "rejected": answers[lo], "scores": scores}, ""


def _v1(cfg, questions, media, word, seed, generate, judge, clip_fn, counts) -> list[dict | None]:
    """One answer per (question, temperature): one call per temperature for all questions, one judge call.

    `media[j]` and `counts[j]` belong to question j (questions of one item share its Counter).
    """
    k = len(cfg.temperatures)
    by_temp = [generate(questions, media, t, seed + i) for i, t in enumerate(cfg.temperatures)]
    answers = [[by_temp[i][j] for i in range(k)] for j in range(len(questions))]
    scores = judge([(q, a) for q, ans in zip(questions, answers) for a in ans], [m for m in media for _ in range(k)], word)
    pairs = []
    for j, ans in enumerate(answers):
        judged = scores[j * k:(j + 1) * k]
        counts[j]["answers"] += len(ans)
        counts[j]["judge_unparsable"] += sum(x is None for x in judged)
        clip = clip_fn(media[j], questions[j], ans) if clip_fn is not None else None
        pair, reason = select_pair(ans, judged, clip, cfg)
        if reason:
            counts[j][f"dropped_{reason}"] += 1
        pairs.append(pair)
    return pairs


def _critique_refine(cfg, questions, media, word, seed, generate, clip_fn, counts) -> list[dict | None]:
    """First answers, critiques and refined answers, one greedy call each for all questions; pair (a1 > a0)."""
    a0 = generate(questions, media, 0.0, seed)
    crit = generate([CRITIQUE_PROMPT.format(m=word, q=q, a=a) for q, a in zip(questions, a0)], media, 0.0, seed)
    a1 = generate([REFINE_PROMPT.format(q=q, a=a, c=c) for q, a, c in zip(questions, a0, crit)], media, 0.0, seed)
    pairs = []
    for j in range(len(questions)):
        counts[j]["answers"] += 2
        if not a0[j].strip() or not a1[j].strip() or a0[j] == a1[j]:
            counts[j]["dropped_refine_unchanged"] += 1
            pairs.append(None)
            continue
        scores = {}
        if clip_fn is not None:
            c1, c0 = clip_fn(media[j], questions[j], [a1[j], a0[j]])
            scores = {"clip_chosen": c1, "clip_rejected": c0, "delta": c1 - c0}
        pairs.append({"chosen": a1[j], "rejected": a0[j], "scores": scores, "meta": {"critique": crit[j]}})
    return pairs


def process_group(cfg: SelfQAConfig, group: list[tuple[int, SFTRecord, object]], generate: Generate,
                  judge: Judge | None, clip_fn, ask: Ask | None = None) -> list[tuple[list[PairRecord], dict]]:
    """All pairs of a group of items of one media type, their model calls batched.

    Args:
        cfg: builder config.
        group: (input position, record, decoded media) per item, in input order.
        generate: question/answer generator `fn(prompts, media, temperature, seed) -> list[str]`.
        judge: S_judge per (question, answer) (`mmpo.builders.judging`); unused by critique_refine.
        clip_fn: `ClipCheck` (media, question, answers) -> CLIP scores, or None.
        ask: question writer `fn(input_position, media, word) -> questions` replacing `ask_questions`, or None.

    Returns:
        (pairs, counters) per item, in the group's order.
    """
    word = group[0][1].media_type
    positions, media = [pos for pos, _, _ in group], [m for _, _, m in group]
    if ask is None:
        questions, owner, fallbacks = ask_questions(cfg, positions, media, word, generate)
    else:  # the caller's question writer, item by item
        asked = [[q.strip() for q in ask(pos, m, word) if q.strip()] for pos, m in zip(positions, media)]
        questions = [q for qs in asked for q in qs]
        owner, fallbacks = [k for k, qs in enumerate(asked) for _ in qs], [0] * len(positions)
    counts = [Counter(question_fallback=f) for f in fallbacks]
    q_media, q_counts = [media[k] for k in owner], [counts[k] for k in owner]
    seed = group_seed(cfg.seed, positions[0])
    if cfg.preset == "critique_refine":
        found = _critique_refine(cfg, questions, q_media, word, seed, generate, clip_fn, q_counts)
    else:
        found = _v1(cfg, questions, q_media, word, seed, generate, judge, clip_fn, q_counts)
    pairs: list[list[PairRecord]] = [[] for _ in group]
    for k, q, pair in zip(owner, questions, found):
        if pair is None:
            continue
        rec = group[k][1]
        pairs[k].append(PairRecord(
            id=pair_id(rec.media, q, pair["chosen"], pair["rejected"]), media=rec.media, media_type=rec.media_type,
            prompt=q, chosen=pair["chosen"], rejected=pair["rejected"], scores=pair["scores"],
            source=f"self_qa/{cfg.preset}", meta={"input_id": rec.id, **pair.get("meta", {})}))
    for k in range(len(group)):
        counts[k]["pairs"] = len(pairs[k])
    return [(p, dict(c)) for p, c in zip(pairs, counts)]


def process_block(cfg: SelfQAConfig, block: list[tuple[int, SFTRecord]], root: Path, models: Callable,
                  clip_fn, ask: Ask | None = None) -> list[tuple[SFTRecord, list, dict, str | None]]:
    """Decode a block's media, then run each media type's items as one group.

    Args:
        cfg: builder config.
        block: (input position, record) per item.
        root: media root.
        models: media type -> (generator, judge).
        clip_fn: CLIP scorer or None.

    Returns:
        (record, pairs, counters, skip reason or None) per item, in input order: the order one process
        commits them whatever the media types, so shards merge into the same file.
    """
    results, groups = {}, {}
    for pos, rec in block:
        try:
            media = load_media(root, rec.media, rec.media_type, cfg.model.num_frames)
        except (MediaError, OSError) as exc:
            results[pos] = (rec, [], {}, str(BadInput(str(exc).splitlines()[0][:300])))
            continue
        groups.setdefault(rec.media_type, []).append((pos, rec, media))
    for media_type, group in groups.items():
        generate, judge = models(media_type)
        for (pos, rec, _), (pairs, counts) in zip(group, process_group(cfg, group, generate, judge, clip_fn, ask)):
            results[pos] = (rec, pairs, counts, None)
    return [results[pos] for pos, _ in block]


def _clip_fn(cfg: SelfQAConfig) -> ClipCheck | None:
    """The default CLIP check: each answer's text against the frames (mean over frames; the question unused)."""
    if not cfg.clip_model:
        return None
    from mmpo.clip import load_clip

    scorer = load_clip(cfg.clip_model, "cpu")
    return lambda media, question, texts: [round(float(x), 6) for x in scorer.frame_text_similarity(media, texts)]


def _check_config(cfg: SelfQAConfig) -> None:
    if cfg.preset not in PRESETS:
        raise ValueError(f"self_qa: unknown preset {cfg.preset!r} (valid: {PRESETS})")
    unknown = [k for k in cfg.question_kinds if k not in QUESTION_TEMPLATES]
    if unknown or not cfg.question_kinds:
        raise ValueError(f"self_qa: question_kinds {unknown or '[]'} invalid (valid: {sorted(QUESTION_TEMPLATES)})")
    if cfg.judge not in JUDGES:
        raise ValueError(f"self_qa: unknown judge {cfg.judge!r} (valid: {JUDGES})")
    if cfg.batch_size < 1 or cfg.questions_per_item < 1:
        raise ValueError("self_qa: batch_size and questions_per_item must be >= 1")


def _own_models(cfg: SelfQAConfig, media_types: set[str]) -> dict:
    """media type -> (generator, judge) of `cfg.model` itself (one model load for all types)."""
    from mmpo.models import load_model

    shards.use_rank_gpu()
    model, processor = load_model(cfg.model)
    out = {}
    for mt in media_types:
        judge = None  # critique_refine has no judge
        if cfg.preset == "videosavi_v1":
            judge = yes_no_judge(model, processor, mt, cfg.batch_size) if cfg.judge == "yes_no" else \
                rubric_judge(model_generator(model, processor, mt, cfg.judge_max_new_tokens, cfg.batch_size))
        out[mt] = (model_generator(model, processor, mt, cfg.max_new_tokens, cfg.batch_size), judge)
    return out


def build(cfg: SelfQAConfig, *, generate: Generate | None = None, judge: Judge | None = None,
          ask: Ask | None = None, clip: ClipCheck | None = None,
          on_record: Callable[[int], None] | None = None) -> Path:
    """Build self-QA preference pairs (resumable).

    Args:
        cfg: builder config.
        generate: override of the generator (default: the model of `cfg.model`).
        judge: override of the judge (default: the same model, as `cfg.judge` says).
        ask: override of the question writer `fn(input_position, media, word) -> questions` (default: the
            model writes them from the templates' instructions).
        clip: override of the CLIP check `fn(media, question, answers) -> scores` (default: `cfg.clip_model`
            scoring each answer alone; None and no clip_model = no check).
        on_record: called with the count of items committed so far (tests simulate crashes with it).

    Returns:
        The output folder; a shard's own folder under `out_dir/shards/` when this process is one shard.
    """
    _check_config(cfg)
    root = default_media_root(cfg.in_sft, cfg.media_root)
    records = read_set(cfg.in_sft, "sft", key="in_sft")
    ids = [r.id for r in records]
    size = items_per_block(cfg)
    if cfg.merge:
        return finish(shards.merge(cfg, ids, cfg.in_sft, size), cfg, ids, root, builder="self_qa", preset=cfg.preset)
    shard, out_dir, mine = shards.plan(cfg, ids, cfg.in_sft, size)
    writer = ResumableWriter(out_dir, fresh=cfg.fresh)
    # blocks by input position (whole blocks per shard): a block with any item left is run whole, as first time
    blocks: dict[int, list] = {}
    for p in mine:
        blocks.setdefault(p // size, []).append((p, records[p]))
    todo = [b for b in blocks.values() if any(not writer.is_done(r.id) for _, r in b)]
    own: dict = {}
    if todo and (generate is None or (judge is None and cfg.preset == "videosavi_v1")):
        own = _own_models(cfg, {r.media_type for b in todo for _, r in b})
    models = lambda mt: (generate or own[mt][0], judge or own.get(mt, (None, None))[1])  # noqa: E731
    clip_fn = (clip or _clip_fn(cfg)) if todo else None
    n = 0
    for block in progress(todo, len(todo), cfg.progress, "self_qa", unit="block"):
        for rec, pairs, counts, skipped in process_block(cfg, block, root, models, clip_fn, ask):
            if writer.is_done(rec.id):  # done before a restart (same block, same calls, same results)
                continue
            writer.commit(rec.id, pairs, counts, skipped=skipped)
            n += 1
            if on_record is not None:
                on_record(n)
    return finish(writer, cfg, [ids[p] for p in mine], root, builder="self_qa", preset=cfg.preset,
                  **shards.shard_manifest(shard))
