"""TRL's preference layouts (HuggingFaceH4/rlaif-v_formatted, trl-lib/rlaif-v), read and written.

Standard: `prompt` / `chosen` / `rejected` strings. Conversational: message lists whose content is a string or
typed parts (`{"type": "image"}` parts mark where the images go, in the order of the `images` column). Images
come from `images` (a list) or `image` (one), as paths or `{bytes, path}` structs. An `id` column, when there
is one (mmpo's writer adds it), is the record's id.
"""

from __future__ import annotations

from mmpo.formats.base import Format, as_list, has, pair_fields
from mmpo.formats.mapping import Unmappable, text_of
from mmpo.formats.messages import answer_text, prompt_dialogue, read_turns


def _prompt(value) -> tuple[str, str]:
    if isinstance(value, str):
        return value, ""
    turns, system = read_turns(value, name="prompt")
    dialogue = prompt_dialogue(turns, system, "prompt")
    return dialogue.prompt, dialogue.system


def _answer(value, name: str) -> str:
    if isinstance(value, list) and len(value) != 1:
        raise Unmappable("bad_field", f"{name!r} holds {len(value)} messages; one assistant answer expected")
    if isinstance(value, list) and isinstance(value[0], dict):
        return text_of(value[0].get("content"), name) or answer_text("", name=name)
    return answer_text(value, name=name)


def read_trl(row: dict, sink, options: dict) -> dict:
    for key in ("prompt", "chosen", "rejected"):
        if row.get(key) is None:
            raise Unmappable("missing_field", f"no {key!r}")
    prompt, system = _prompt(row["prompt"])
    images = as_list(row.get("images")) or as_list(row.get("image"))
    rid = row.get("id") if isinstance(row.get("id"), str) and row.get("id") else None
    return pair_fields(images, "image", prompt, _answer(row["chosen"], "chosen"), _answer(row["rejected"], "rejected"),
                       sink=sink, meta={"system": system}, rid=rid)


def _is_trl(cols: set, row: dict) -> bool:
    if not has(cols, "prompt", "chosen", "rejected"):
        return False
    return bool(cols & {"images"}) or isinstance(row.get("prompt"), list) or isinstance(row.get("image"), dict)


FORMATS = [Format("trl", "pair", read_trl, _is_trl, heavy=("images", "image"),
                  doc="TRL standard or conversational prompt/chosen/rejected + images (list) or image")]
