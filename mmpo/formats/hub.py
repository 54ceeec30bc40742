"""Hub parquet sets with one embedded image per row: RLAIF-V, RLHF-V, VLFeedback.

RLAIF-V (openbmb/RLAIF-V-Dataset): `image` struct {bytes, path}, bare `question`, `chosen`, `rejected`, and
`ds_name` / `origin_dataset` / `origin_split` / `idx` / `image_path` kept in meta. RLHF-V: the same but the
texts sit in `text`, a JSON string `{question, chosen, rejected}`. VLFeedback: four rated completions per
prompt; the pair is the best- and the worst-rated completion (mean of the GPT-4V ratings), and a row whose
ratings tie prefers nothing (counted `no_preference`).
"""

from __future__ import annotations

import json

from mmpo.formats.base import Format, as_list, has, pair_fields
from mmpo.formats.mapping import Unmappable, need

_META = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")


def read_rlaif_v(row: dict, sink, options: dict) -> dict:
    meta = {k: row.get(k) for k in _META}
    return pair_fields([need(row, "image", (dict, str, bytes))], "image", need(row, "question"), need(row, "chosen"),
                       need(row, "rejected"), sink=sink, meta=meta)


def read_rlhf_v(row: dict, sink, options: dict) -> dict:
    try:
        text = json.loads(need(row, "text"))
    except json.JSONDecodeError as exc:
        raise Unmappable("bad_field", f"'text' is not JSON ({exc.msg})") from None
    if not isinstance(text, dict):
        raise Unmappable("bad_field", "'text' is not a JSON object")
    meta = {k: row.get(k) for k in _META}
    return pair_fields([need(row, "image", (dict, str, bytes))], "image", need(text, "question"), need(text, "chosen"),
                       need(text, "rejected"), sink=sink, meta=meta)


def _rating(completion: dict) -> float:
    """Mean of a VLFeedback completion's ratings (strings "1".."5"; "N/A" and missing ones are left out)."""
    values = []
    for aspect in (completion.get("annotations") or {}).values():
        try:
            values.append(float((aspect or {}).get("Rating")))
        except (TypeError, ValueError):
            continue
    if not values:
        raise Unmappable("no_rating", f"completion of {completion.get('model')!r} has no numeric rating")
    return sum(values) / len(values)


def read_vlfeedback(row: dict, sink, options: dict) -> dict:
    completions = need(row, "completions", list)
    rated = sorted(((_rating(c), k, c) for k, c in enumerate(completions) if isinstance(c, dict)),
                   key=lambda t: (-t[0], t[1]))
    if len(rated) < 2 or rated[0][0] == rated[-1][0]:
        raise Unmappable("no_preference", "fewer than two completions, or all rated the same")
    best, worst = rated[0], rated[-1]
    image = row.get("image") if row.get("image") is not None else need(row, "img_path")
    meta = {"source_id": row.get("id"), "chosen_model": best[2].get("model"), "rejected_model": worst[2].get("model"),
            "chosen_rating": best[0], "rejected_rating": worst[0]}
    return pair_fields(as_list(image), "image", need(row, "prompt"), need(best[2], "response"),
                       need(worst[2], "response"), sink=sink, meta=meta)


FORMATS = [
    Format("rlaif_v", "pair", read_rlaif_v, lambda c, r: has(c, "question", "chosen", "rejected", "image"),
           heavy=("image",), doc="openbmb/RLAIF-V-Dataset parquet: image struct {bytes, path}, question, chosen, rejected"),
    Format("rlhf_v", "pair", read_rlhf_v, lambda c, r: has(c, "text", "image") and "chosen" not in c,
           heavy=("image",), doc="openbmb/RLHF-V-Dataset parquet: image struct, text = JSON {question, chosen, rejected}"),
    Format("vlfeedback", "pair", read_vlfeedback, lambda c, r: has(c, "prompt", "completions"),
           heavy=("image",), doc="MMInstruction/VLFeedback: best- vs worst-rated of the completions; img_path or image"),
]
