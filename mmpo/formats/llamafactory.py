"""LLaMA-Factory's preference layouts (read and written) and its multimodal SFT layout (read).

- sharegpt preference: `conversations` (prompt turns, a leading `system` turn allowed) + `chosen` / `rejected`
  message objects + `images` / `videos` path lists, `<image>` / `<video>` tags in the turns;
- alpaca preference: `instruction` (+ `input`), `chosen` / `rejected` strings, `images` (RLAIF-V's entry maps
  `prompt: question`, `images: image`);
- v1 JSONL: `chosen_messages` / `rejected_messages` with typed content parts (`image_url` parts inline);
- SFT: `messages` + `images` / `videos` (one sample per answer, for the builders).

Column names and role tags come from the `dataset_info.json` beside the file when it has an entry for it
(`columns`, `tags`, `formatting`), else LLaMA-Factory's defaults. Paths are relative to that folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpo.formats.base import Format, as_list, has, pair_fields, sft_samples
from mmpo.formats.export_media import MediaCopier, check_writable
from mmpo.formats.mapping import Unmappable, need, turns_prompt
from mmpo.formats.messages import OPENAI, SHAREGPT, answer_text, read_turns, split_last_answer

DATASET_INFO = "dataset_info.json"
SHAREGPT_COLUMNS = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images",
                    "videos": "videos", "system": "system"}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
                  "images": "images", "videos": "videos", "system": "system"}


def dataset_info_entry(src: Path) -> dict:
    """The `dataset_info.json` entry for data file `src` (by `file_name`), or {} when there is none."""
    src = Path(src)
    folder = src.parent if src.is_file() else src
    info_path = folder / DATASET_INFO
    if not info_path.is_file():
        return {}
    info = json.loads(info_path.read_text(encoding="utf-8"))
    entries = {name: e for name, e in info.items() if isinstance(e, dict) and e.get("file_name")}
    if src.is_file():
        return next((e for e in entries.values() if (folder / e["file_name"]).resolve() == src.resolve()), {})
    present = [e for e in entries.values() if (folder / e["file_name"]).exists()]
    return present[0] if len(present) == 1 else {}


def options(src: Path, table) -> dict:
    """Column mapping and role tags from dataset_info.json (or the defaults) for the rows' layout."""
    entry = dataset_info_entry(src)
    cols = set(table.columns)
    alpaca = entry.get("formatting") == "alpaca" or (not entry and "instruction" in cols)
    columns = {**(ALPACA_COLUMNS if alpaca else SHAREGPT_COLUMNS), **entry.get("columns", {})}
    tags = dict(SHAREGPT)
    if entry.get("tags"):
        tags.update(entry["tags"])
    elif "messages" in cols and "conversations" not in cols:
        tags = dict(OPENAI)
    if not entry and "messages" in cols and "conversations" not in cols:
        columns["messages"] = "messages"
    return {"columns": columns, "tags": tags, "alpaca": alpaca}


def _media(row: dict, columns: dict) -> tuple[list, str]:
    videos = as_list(row.get(columns.get("videos", "videos")))
    images = as_list(row.get(columns.get("images", "images")))
    if videos and images:
        raise Unmappable("mixed_media", "images and videos in one row (an mmpo record holds one media type)")
    return (videos, "video") if videos else (images, "image")


def read_preference(row: dict, sink, opts: dict) -> dict:
    """sharegpt or alpaca preference row -> pair fields."""
    columns, tags = opts["columns"], opts["tags"]
    media, media_type = _media(row, columns)
    system = row.get(columns.get("system", "system")) or ""
    if opts["alpaca"]:
        prompt = need(row, columns["prompt"])
        if row.get(columns.get("query", "input")):
            prompt = f"{prompt}\n{row[columns['query']]}"
        turns = [("user", prompt)]
    else:
        turns, lifted = read_turns(need(row, columns["messages"], list), tags, columns["messages"])
        system = system or lifted
        if not turns or turns[-1][0] != "user":
            raise Unmappable("bad_conversation", f"{columns['messages']!r} must end with a user turn")
    prompt = turns_prompt(turns, media_type, len(media))
    chosen = answer_text(row.get(columns["chosen"]), tags, "chosen")
    rejected = answer_text(row.get(columns["rejected"]), tags, "rejected")
    rid = row.get("id") if isinstance(row.get("id"), str) and row.get("id") else None
    return pair_fields(media, media_type, prompt, chosen, rejected, sink=sink, markers=False, rid=rid,
                       meta={"system": system})


def _v1_turns(messages, name: str) -> tuple[list, list, str]:
    """(turns, inline media paths, media type) of a v1 message list (typed parts; image_url / video_url parts)."""
    media, kinds = [], set()
    for m in messages if isinstance(messages, list) else []:
        for part in m.get("content", []) if isinstance(m, dict) and isinstance(m.get("content"), list) else []:
            if isinstance(part, dict) and part.get("type") in ("image_url", "video_url"):
                media.append(part.get("value"))
                kinds.add(part["type"].split("_")[0])
    if len(kinds) > 1:
        raise Unmappable("mixed_media", f"{name}: images and videos in one row")
    turns, system = read_turns(messages, OPENAI, name)
    return turns, media, (kinds.pop() if kinds else "image"), system


def read_v1(row: dict, sink, opts: dict) -> dict:
    """v1 JSONL pair: both sides repeat the prompt; the final assistant messages differ."""
    c_turns, media, media_type, system = _v1_turns(need(row, "chosen_messages", list), "chosen_messages")
    r_turns, r_media, _, _ = _v1_turns(need(row, "rejected_messages", list), "rejected_messages")
    prompt_turns, chosen = split_last_answer(c_turns, "chosen_messages")
    r_prompt, rejected = split_last_answer(r_turns, "rejected_messages")
    if r_prompt != prompt_turns or r_media != media:
        raise Unmappable("prompt_mismatch", "chosen_messages and rejected_messages differ before the answer")
    prompt = turns_prompt(prompt_turns, media_type, len(media))
    return pair_fields(media, media_type, prompt, chosen, rejected, sink=sink, markers=False, meta={"system": system})


def read_sft(row: dict, sink, opts: dict) -> list[dict]:
    """SFT row (`messages` + images/videos) -> one sample per assistant answer, history in its prompt."""
    columns, tags = opts["columns"], opts["tags"]
    if "messages" in row and isinstance(row["messages"], list) and row["messages"] and \
            isinstance(row["messages"][0].get("content"), list):  # v1 SFT: inline image_url parts
        turns, media, media_type, _ = _v1_turns(row["messages"], "messages")
    else:
        turns, _ = read_turns(need(row, columns["messages"], list), tags, columns["messages"])
        media, media_type = _media(row, columns)
    return sft_samples(turns, media, media_type, sink, {}, columns["messages"])


def write_rows(records, media: MediaCopier) -> list[dict]:
    """mmpo pairs as LLaMA-Factory sharegpt preference rows (one user turn, `images` / `videos`, + `id`); `media` gives
    each media list's paths in the written folder."""
    rows = []
    for r in records:
        check_writable(r, "LLaMA-Factory")
        paths = media(r.media)
        marker = "<image>" if r.media_type == "image" else "<video>"
        prompt = r.prompt if marker in r.prompt else marker * len(paths) + r.prompt
        rows.append({"id": r.id, "conversations": [{"from": "human", "value": prompt}],
                     "chosen": {"from": "gpt", "value": r.chosen}, "rejected": {"from": "gpt", "value": r.rejected},
                     ("images" if r.media_type == "image" else "videos"): paths})
    return rows


def info_entry(file_name: str, media_type: str) -> dict:
    """The `dataset_info.json` entry LLaMA-Factory needs for a file `write_rows` made."""
    key = "images" if media_type == "image" else "videos"
    return {"file_name": file_name, "ranking": True, "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", key: key}}


def _is_sharegpt_pref(cols: set, row: dict) -> bool:
    return has(cols, "chosen", "rejected") and bool(cols & {"conversations", "messages"}) and isinstance(
        row.get("chosen"), dict)


FORMATS = [
    Format("llamafactory", "pair", read_preference,
           lambda c, r: _is_sharegpt_pref(c, r) or (has(c, "instruction", "chosen", "rejected")),
           options=options, doc="LLaMA-Factory sharegpt / alpaca preference JSON (+ images/videos, dataset_info.json)"),
    Format("llamafactory_v1", "pair", read_v1, lambda c, r: has(c, "chosen_messages", "rejected_messages"),
           doc="LLaMA-Factory v1 JSONL: chosen_messages / rejected_messages with typed parts, image_url parts"),
    Format("llamafactory_sft", "sft", read_sft,
           lambda c, r: "messages" in c and not (c & {"chosen", "rejected", "rejected_response", "rejected_messages"}),
           options=options, doc="LLaMA-Factory SFT: messages + images/videos (or v1 inline image_url parts)"),
]
