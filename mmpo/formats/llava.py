"""LLaVA-code layouts: POVID, HA-DPO, LLaVA-NeXT / LLaVA-Hound video DPO, mDPO, and LLaVA conversation SFT.

These put `"<image>\\n" + question` in the text (or have their loaders prepend it) and name media by a path
relative to an image / video folder; the paths are read in place (`data.media_root` or the file's folder).
"""

from __future__ import annotations

import re

from mmpo.formats.base import Format, as_list, has, pair_fields, sft_samples
from mmpo.formats.mapping import Unmappable, need, strip_leading, turns_prompt
from mmpo.formats.messages import SHAREGPT, read_turns, split_last_answer


def _media_of(row: dict) -> tuple[list, str]:
    if row.get("video") is not None:
        return as_list(row["video"]), "video"
    for key in ("image", "frame", "img_path"):
        if row.get(key) is not None:
            return as_list(row[key]), "image"
    raise Unmappable("no_media", f"no image or video (keys: {sorted(row)})")


def read_povid(row: dict, sink, options: dict) -> dict:
    chosen_turns, system = read_turns(need(row, "conversations", list), SHAREGPT, "conversations")
    rejected_turns, _ = read_turns(need(row, "rejected_conversations", list), SHAREGPT, "rejected_conversations")
    prompt_turns, chosen = split_last_answer(chosen_turns, "conversations")
    rejected_prompt, rejected = split_last_answer(rejected_turns, "rejected_conversations")
    if rejected_prompt != prompt_turns:
        raise Unmappable("prompt_mismatch", "conversations and rejected_conversations differ before the answer")
    media, media_type = _media_of(row)
    prompt = turns_prompt(prompt_turns, media_type, len(media))
    return pair_fields(media, media_type, prompt, chosen, rejected, sink=sink, markers=False,
                       meta={"source_id": row.get("id"), "system": system})


HADPO_DESC_PROMPT = "Describe this image in detail."  # HA-DPO's loader draws one of four; the set stores none


def read_hadpo(row: dict, sink, options: dict) -> dict:
    """HA-DPO: `pope_data.json` rows ({image_id, question, chosen, reject, correct}; `correct: true` rows are
    not pairs, as in HA-DPO's own loader) or `desc_data.json` entries (keyed by image_id; first candidates)."""
    image = row.get("image") or options.get("image_pattern", "{image_id}.jpg").format(
        image_id=row.get("image_id", row.get("key")))
    if "reject" in row:
        if row.get("correct") is True:
            raise Unmappable("not_a_pair", "correct: true (HA-DPO's loader skips these rows)")
        return pair_fields([image], "image", strip_leading(need(row, "question")), need(row, "chosen"),
                           need(row, "reject"), sink=sink, meta={"image_id": row.get("image_id"),
                                                                 "answer": row.get("answer")})
    chosen, rejected = need(row, "chosen", list), need(row, "rejected", list)
    if not chosen or not rejected:
        raise Unmappable("empty_text", "no chosen or no rejected candidate")
    return pair_fields([image], "image", HADPO_DESC_PROMPT, chosen[0], rejected[0], sink=sink,
                       meta={"image_id": row.get("key")})


def read_llava_video_dpo(row: dict, sink, options: dict) -> dict:
    """LLaVA-NeXT / LLaVA-Hound DPO JSONL: `prompt`, `chosen`, `rejected`, `video` (or `image` / `frame`).
    Both loaders prepend their own marker (LLaVA-NeXT `<image>\\n` even for video), so any leading one goes."""
    media, media_type = _media_of(row)
    meta = {k: row.get(k) for k in ("id", "answer", "chosen_score", "rejected_score")}
    meta["source_id"] = meta.pop("id")
    return pair_fields(media, media_type, strip_leading(need(row, "prompt")), need(row, "chosen"), need(row, "rejected"),
                       sink=sink, meta=meta)


_MDPO_TEMPLATE = re.compile(r"^.*?USER:\s*(?P<q>.*?)\s*ASSISTANT:\s*$", re.S)


def read_mdpo(row: dict, sink, options: dict) -> dict:
    """mDPO: the prompt ships chat-templated (`... USER: <image>\\n{question} ASSISTANT:`); the question is cut out."""
    match = _MDPO_TEMPLATE.match(need(row, "prompt"))
    if not match:
        raise Unmappable("bad_field", "prompt is not in the 'USER: ... ASSISTANT:' template")
    return pair_fields([need(row, "img_path")], "image", match.group("q"), need(row, "chosen"), need(row, "rejected"),
                       sink=sink)


def read_llava_sft(row: dict, sink, options: dict) -> list[dict]:
    """LLaVA conversation JSON (llava_v1_5_mix665k, LLaVA-Video-178K, ShareGPT4Video): one SFT sample per answer,
    earlier turns kept in its prompt. Text-only rows (665k holds some) are counted `no_media`."""
    turns, _ = read_turns(need(row, "conversations", list), SHAREGPT, "conversations")
    media, media_type = _media_of(row)
    if media_type == "video" and turns:  # LLaVA-NeXT's video data keeps LLaVA's "<image>\n" lead: it means the clip
        turns[0] = (turns[0][0], strip_leading(turns[0][1]))
    return sft_samples(turns, media, media_type, sink, {"source_id": row.get("id")}, "conversations")


def _is_llava_video_dpo(cols: set, row: dict) -> bool:
    return has(cols, "prompt", "chosen", "rejected") and (
        isinstance(row.get("video"), str) or isinstance(row.get("image"), str) or isinstance(row.get("frame"), str))


FORMATS = [
    Format("povid", "pair", read_povid, lambda c, r: has(c, "conversations", "rejected_conversations"),
           doc="POVID: LLaVA conversations / rejected_conversations + image path"),
    Format("hadpo", "pair", read_hadpo,
           lambda c, r: has(c, "question", "chosen", "reject") or (has(c, "key", "chosen", "rejected")
                                                                  and isinstance(r.get("chosen"), list)),
           doc="HA-DPO pope_data.json (question, chosen, reject) or desc_data.json ({image_id: {chosen, rejected}})"),
    Format("mdpo", "pair", read_mdpo, lambda c, r: has(c, "img_path", "prompt", "chosen", "rejected"),
           doc="mDPO: img_path + chat-templated prompt, chosen, rejected"),
    Format("llava_video_dpo", "pair", read_llava_video_dpo, _is_llava_video_dpo,
           doc="LLaVA-NeXT / LLaVA-Hound DPO JSONL (ShareGPTVideo sft_dpo_17k): prompt, chosen, rejected, video"),
    Format("llava", "sft", read_llava_sft,
           lambda c, r: "conversations" in c and bool(c & {"image", "video"}) and "rejected_conversations" not in c
           and "chosen" not in c,
           doc="LLaVA conversation JSON SFT (llava_v1_5_mix665k, LLaVA-Video-178K, ShareGPT4Video): "
               "image/video + conversations"),
]
