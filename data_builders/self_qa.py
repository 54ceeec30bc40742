"""Self-QA builder (VideoSAVi, METHODS.md §2): the model questions, answers and judges itself.

Preset `videosavi_v1` [paper v1; selection rules RECONSTRUCTION]: per video/image the model writes
questions from What/Why/How/temporal templates, samples one answer per temperature, scores each
answer with a rubric prompt (relevance, accuracy, temporal grounding, clarity; 1-10 each), and CLIP
scores each answer against the frames. Pair: chosen = best judged, rejected = worst judged, kept when
the judge gap is >= `min_gap` AND the CLIP order agrees (s_clip(y_w) >= s_clip(y_l)).
`scores["delta"] = s_clip(y_w) - s_clip(y_l)` feeds the CLIP-adjusted DPO loss.

Preset `critique_refine` [paper v2/v3]: initial answer a0, self-critique c, refined answer a1;
pair (a1 > a0).

The generator is a plain callable `fn(prompts, media, temperature, seed) -> list[str]` and the judge a
`data_builders.judging.Judge` (`rubric`: the model writes scores; `yes_no`: its yes/no logits), so tests can
run the real tiny model as generator with a fake judge (`build(..., judge=...)`). A question writer
`fn(item_index, media, word) -> list[str]` may replace the model's own question writing (`build(..., ask=...)`;
the demo's tiny model fills question templates from its own caption because it cannot write questions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from data_builders.common import BadInput, ResumableWriter, finish, progress
from data_builders.judging import JUDGES, Judge, rubric_judge, yes_no_judge
from mmpo.config import ModelConfig
from mmpo.media import MediaError, load_media
from mmpo.records import PairRecord, SFTRecord, default_media_root, pair_id, read_sft

PRESETS = ("videosavi_v1", "critique_refine")
# kind -> (instruction that asks the model for a question, fallback question if it writes nothing)
QUESTION_TEMPLATES = {
    "what": ("Write one question starting with What about this {m}.", "What is shown in the {m} ?"),
    "why": ("Write one question starting with Why about this {m}.", "Why does the scene in the {m} look this way ?"),
    "how": ("Write one question starting with How about this {m}.", "How do the objects in the {m} move ?"),
    "temporal": ("Write one question about what happens first and what happens after in this {m}.",
                 "What happens first and what happens after in the {m} ?"),
}
CRITIQUE_PROMPT = ("Question: {q} Answer: {a} Check the answer against the {m}: list factual errors, "
                   "hallucinated objects or events, and omissions.")
REFINE_PROMPT = "Question: {q} First answer: {a} Critique: {c} Write a corrected answer to the question."

Generate = Callable[[list, list, float, int], list]
Ask = Callable[[int, object, str], list]


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


# -- pipeline -------------------------------------------------------------------------------------

def model_generator(model, processor, media_type: str, max_new_tokens: int) -> Generate:
    """Wrap `mmpo.models.generate_answers` as a `fn(prompts, media, temperature, seed) -> list[str]`."""
    from mmpo.models import generate_answers

    def generate(prompts: list, media: list, temperature: float, seed: int) -> list:
        out = generate_answers(model, processor, prompts, media, media_type, num_samples=1,
                               temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        return [o[0] for o in out]

    return generate


def ask_questions(cfg: SelfQAConfig, item_index: int, media, word: str, generate: Generate) -> tuple[list, int]:
    """Questions for one item (greedy), with the template's fallback when the model writes nothing."""
    kinds = [cfg.question_kinds[(item_index + j) % len(cfg.question_kinds)] for j in range(cfg.questions_per_item)]
    asked = generate([QUESTION_TEMPLATES[k][0].format(m=word) for k in kinds], [media] * len(kinds), 0.0, cfg.seed)
    questions, fallbacks = [], 0
    for k, q in zip(kinds, asked):
        if not q.strip():
            q, fallbacks = QUESTION_TEMPLATES[k][1].format(m=word), fallbacks + 1
        questions.append(q.strip())
    return questions, fallbacks


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
    """One answer per (question, temperature), batched over questions; one batched judge call."""
    nq = len(questions)
    by_temp = [generate(questions, [media] * nq, t, seed + i) for i, t in enumerate(cfg.temperatures)]
    answers = [[by_temp[i][j] for i in range(len(cfg.temperatures))] for j in range(nq)]
    scores = judge([(q, a) for q, ans in zip(questions, answers) for a in ans], media, word)
    k = len(cfg.temperatures)
    pairs = []
    for j, ans in enumerate(answers):
        judged = scores[j * k:(j + 1) * k]
        counts["answers"] += len(ans)
        counts["judge_unparsable"] += sum(x is None for x in judged)
        clip = clip_fn(media, ans) if clip_fn is not None else None
        pair, reason = select_pair(ans, judged, clip, cfg)
        if reason:
            counts[f"dropped_{reason}"] += 1
        pairs.append(pair)
    return pairs


def _critique_refine(cfg, q, media, word, seed, generate, clip_fn, counts) -> dict | None:
    a0 = generate([q], [media], 0.0, seed)[0]
    c = generate([CRITIQUE_PROMPT.format(m=word, q=q, a=a0)], [media], 0.0, seed)[0]
    a1 = generate([REFINE_PROMPT.format(q=q, a=a0, c=c)], [media], 0.0, seed)[0]
    counts["answers"] += 2
    if not a0.strip() or not a1.strip() or a0 == a1:
        counts["dropped_refine_unchanged"] += 1
        return None
    scores = {}
    if clip_fn is not None:
        c1, c0 = clip_fn(media, [a1, a0])
        scores = {"clip_chosen": c1, "clip_rejected": c0, "delta": c1 - c0}
    return {"chosen": a1, "rejected": a0, "scores": scores, "meta": {"critique": c}}


def process_item(cfg: SelfQAConfig, index: int, rec: SFTRecord, media, generate: Generate, judge: Judge | None,
                 clip_fn, ask: Ask | None = None) -> tuple[list[PairRecord], dict]:
    """All pairs of one video/image.

    Args:
        cfg: builder config.
        index: the item's position in the input (rotates the question templates).
        rec: the input record (media paths, id).
        media: decoded media (PIL image or (T,H,W,3) frames).
        generate: question/answer generator `fn(prompts, media, temperature, seed) -> list[str]`.
        judge: S_judge per (question, answer) (`data_builders.judging`); unused by critique_refine.
        clip_fn: `fn(media, texts) -> list[float]` CLIP scores, or None.
        ask: question writer `fn(index, media, word) -> questions` replacing `ask_questions`, or None.

    Returns:
        (pairs, per-item counters).
    """
    from collections import Counter

    counts: Counter = Counter()
    word = rec.media_type
    if ask is None:
        questions, counts["question_fallback"] = ask_questions(cfg, index, media, word, generate)
    else:
        questions = [q for q in ask(index, media, word) if q.strip()]
    seed = cfg.seed * 100_003 + index * 101
    if cfg.preset == "critique_refine":
        found = [_critique_refine(cfg, q, media, word, seed + 11 * j, generate, clip_fn, counts)
                 for j, q in enumerate(questions)]
    else:
        found = _v1(cfg, questions, media, word, seed, generate, judge, clip_fn, counts)
    pairs = []
    for q, pair in zip(questions, found):
        if pair is None:
            continue
        pairs.append(PairRecord(
            id=pair_id(rec.media, q, pair["chosen"], pair["rejected"]), media=rec.media, media_type=rec.media_type,
            prompt=q, chosen=pair["chosen"], rejected=pair["rejected"], scores=pair["scores"],
            source=f"self_qa/{cfg.preset}", meta={"input_id": rec.id, **pair.get("meta", {})}))
    counts["pairs"] = len(pairs)
    return pairs, dict(counts)


def _clip_fn(cfg: SelfQAConfig):
    if not cfg.clip_model:
        return None
    from mmpo.clip import load_clip

    scorer = load_clip(cfg.clip_model, "cpu")
    return lambda media, texts: [round(float(x), 6) for x in scorer.frame_text_similarity(media, texts)]


def build(cfg: SelfQAConfig, *, generate: Generate | None = None, judge: Judge | None = None,
          ask: Ask | None = None, on_record: Callable[[int], None] | None = None) -> Path:
    """Build self-QA preference pairs (resumable).

    Args:
        cfg: builder config.
        generate: override of the generator (default: the model of `cfg.model`).
        judge: override of the judge (default: the same model, as `cfg.judge` says).
        ask: override of the question writer `fn(item_index, media, word) -> questions` (default: the
            generator answers the template instructions of `cfg.question_kinds`).
        on_record: called with the count of items committed so far (tests simulate crashes with it).

    Returns:
        The output folder.
    """
    if cfg.preset not in PRESETS:
        raise ValueError(f"self_qa: unknown preset {cfg.preset!r} (valid: {PRESETS})")
    unknown = [k for k in cfg.question_kinds if k not in QUESTION_TEMPLATES]
    if unknown or not cfg.question_kinds:
        raise ValueError(f"self_qa: question_kinds {unknown or '[]'} invalid (valid: {sorted(QUESTION_TEMPLATES)})")
    if cfg.judge not in JUDGES:
        raise ValueError(f"self_qa: unknown judge {cfg.judge!r} (valid: {JUDGES})")
    root = default_media_root(cfg.in_sft, cfg.media_root)
    records = read_sft(cfg.in_sft)
    writer = ResumableWriter(cfg.out_dir, fresh=cfg.fresh)
    todo = [(i, r) for i, r in enumerate(records) if not writer.is_done(r.id)]
    gens: dict = {}  # media type -> (generator, judge) of the model itself
    if todo and (generate is None or (judge is None and cfg.preset == "videosavi_v1")):
        from mmpo.models import load_model

        model, processor = load_model(cfg.model)
        for mt in {r.media_type for _, r in todo}:
            own_judge = None  # critique_refine has no judge
            if cfg.preset == "videosavi_v1":
                own_judge = yes_no_judge(model, processor, mt) if cfg.judge == "yes_no" else \
                    rubric_judge(model_generator(model, processor, mt, cfg.judge_max_new_tokens))
            gens[mt] = (model_generator(model, processor, mt, cfg.max_new_tokens), own_judge)
    clip_fn = _clip_fn(cfg) if todo else None
    for n, (i, rec) in enumerate(progress(todo, len(todo), cfg.progress, "self_qa"), 1):
        try:
            media = load_media(root, rec.media, rec.media_type, cfg.model.num_frames)
        except (MediaError, OSError) as exc:
            writer.commit(rec.id, [], {}, skipped=str(BadInput(str(exc).splitlines()[0][:300])))
        else:
            g = generate or gens[rec.media_type][0]
            jd = judge or gens.get(rec.media_type, (None, None))[1]
            pairs, counts = process_item(cfg, i, rec, media, g, jd, clip_fn, ask)
            writer.commit(rec.id, pairs, counts)
        if on_record is not None:
            on_record(n)
    return finish(writer, cfg, len(records), root, builder="self_qa", preset=cfg.preset)
