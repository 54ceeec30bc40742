"""ms-swift's RLHF layout (DPO / ORPO / CPO / SimPO / RM), read and written.

`messages` (OpenAI roles; the last assistant message is the chosen answer; `<image>` / `<video>` tags) with
`images` / `videos`, and the rejection as `rejected_response` (a string or assistant messages) or
`rejected_messages` (a whole conversation, which must repeat the prompt); `rejected_images` /
`rejected_videos` give the rejected side other media (an mmpo `rejected_media` pair).
"""

from __future__ import annotations

from mmpo.formats.base import Format, as_list, pair_fields
from mmpo.formats.export_media import MediaCopier, check_writable
from mmpo.formats.mapping import Unmappable, need, turns_prompt
from mmpo.formats.messages import answer_text, read_turns, split_last_answer


def read_swift(row: dict, sink, options: dict) -> dict:
    turns, system = read_turns(need(row, "messages", list))
    prompt_turns, chosen = split_last_answer(turns, "messages")
    videos, images = as_list(row.get("videos")), as_list(row.get("images"))
    if videos and images:
        raise Unmappable("mixed_media", "images and videos in one row (an mmpo record holds one media type)")
    media, media_type = (videos, "video") if videos else (images, "image")
    if row.get("rejected_messages") is not None:
        r_turns, _ = read_turns(row["rejected_messages"], name="rejected_messages")
        r_prompt, rejected = split_last_answer(r_turns, "rejected_messages")
        if r_prompt != prompt_turns:
            raise Unmappable("prompt_mismatch", "messages and rejected_messages differ before the answer")
    elif row.get("rejected_response") is not None:
        rejected = answer_text(row["rejected_response"], name="rejected_response")
    else:
        raise Unmappable("missing_field", "neither rejected_response nor rejected_messages")
    rejected_media = as_list(row.get("rejected_videos" if media_type == "video" else "rejected_images")) or None
    if rejected_media is not None and len(rejected_media) != len(media):
        raise Unmappable("marker_mismatch", f"{len(rejected_media)} rejected media for {len(media)} media")
    prompt = turns_prompt(prompt_turns, media_type, len(media))
    rid = row.get("id") if isinstance(row.get("id"), str) and row.get("id") else None
    return pair_fields(media, media_type, prompt, chosen, rejected, sink=sink, markers=False, rid=rid,
                       rejected_media=rejected_media, meta={"system": system})


def write_rows(records, media: MediaCopier) -> list[dict]:
    """mmpo pairs as ms-swift rows: user + assistant messages, `images` / `videos`, `rejected_response` (+ id);
    a `rejected_media` pair repeats the answer and names `rejected_images` / `rejected_videos`. `media` gives
    each media list's paths in the written folder."""
    rows = []
    for r in records:
        check_writable(r, "ms-swift", allow_rejected_media=True)
        key = "images" if r.media_type == "image" else "videos"
        marker = "<image>" if r.media_type == "image" else "<video>"
        paths = media(r.media)
        prompt = r.prompt if marker in r.prompt else marker * len(paths) + r.prompt
        row = {"id": r.id, "messages": [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": r.chosen}],
               key: paths, "rejected_response": r.rejected}
        if r.rejected_media is not None:
            row["rejected_" + key] = media(r.rejected_media)
        rows.append(row)
    return rows


FORMATS = [Format("swift", "pair", read_swift,
                  lambda c, r: "messages" in c and bool(c & {"rejected_response", "rejected_messages"}),
                  doc="ms-swift RLHF JSONL: messages + rejected_response / rejected_messages (+ rejected_images)")]
