"""What a finished build says on the console: its counts and skips in one line, and why it wrote no pair.

Every builder ends by writing `manifest.json` (`mmpo.builders.common.finish`), so the one place that reads it
back (`mmpo build`) reports every builder alike: a build that wrote nothing must not look like a success.
"""

from __future__ import annotations

# counter -> what to try when it is what left the build without pairs
HINTS = {
    "judge_unparsable": "the judge's replies could not be read as scores (a model too small for the rubric "
                        "judge): use judge=yes_no, which reads the answer from the model's yes/no logits",
    "dropped_too_few_judged": "too few answers per question were judged: use judge=yes_no, or more temperatures",
    "dropped_judge_gap_small": "the judge scored chosen and rejected answers too alike: lower min_gap",
    "dropped_clip_disagrees": "CLIP ranked every pair the other way round: check clip_model, or set clip_model=\"\"",
    "dropped_clip_below_floor": "every chosen answer was below clip_floor: lower it (-1 = off)",
    "dropped_refine_unchanged": "the refined answers equal the first ones: a larger model, or preset=videosavi_v1",
    "candidates_dropped": "the CLIP prefilter dropped every augmentation: lower its threshold or set clip_model=\"\"",
}
_NOT_REASONS = {"inputs", "inputs_done", "pairs", "skipped", "answers", "questions"}


def summary_line(manifest: dict) -> str:
    """"12 pairs from 16 inputs; 3 skipped (first: ...); judge_unparsable 5, ..." from a manifest."""
    counts = manifest.get("counts", {})
    text = f"{counts.get('pairs', 0)} pairs from {counts.get('inputs', counts.get('inputs_done', 0))} inputs"
    skipped = manifest.get("skipped") or []
    if skipped:
        first = skipped[0]
        reason = first.get("reason", first) if isinstance(first, dict) else first
        text += f"; {len(skipped)} skipped (first: {reason})"
    others = [f"{k} {v}" for k, v in counts.items() if k not in ("pairs", "inputs", "inputs_done", "skipped") and v]
    return text + (f"; {', '.join(others)}" if others else "")


def empty_reason(manifest: dict) -> str | None:
    """Why a build wrote no pair, or None when it wrote some (or had nothing to do: a shard with no inputs)."""
    counts = manifest.get("counts", {})
    if counts.get("pairs", 0) > 0:
        return None
    inputs = counts.get("inputs", 0)
    if inputs == 0:
        return None if manifest.get("shard") else "the input file has no records"
    skipped = manifest.get("skipped") or []
    if skipped and len(skipped) >= counts.get("inputs_done", inputs):
        first = skipped[0].get("reason") if isinstance(skipped[0], dict) else skipped[0]
        return f"all {len(skipped)} inputs were skipped (first: {first}); see manifest.json"
    drops = {k: v for k, v in counts.items() if k not in _NOT_REASONS and isinstance(v, (int, float)) and v}
    if not drops:
        return f"none of the {inputs} inputs gave a pair; see manifest.json"
    worst = max(drops, key=drops.get)
    of = f" of {counts['answers']} answers" if worst == "judge_unparsable" and "answers" in counts else ""
    hint = HINTS.get(worst, "see manifest.json for the counts")
    return f"{worst} {drops[worst]}{of}: {hint}"
