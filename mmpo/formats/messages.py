"""Conversations in the layouts the formats use: OpenAI `role`/`content` or ShareGPT `from`/`value` turns."""

from __future__ import annotations

from dataclasses import dataclass

from mmpo.formats.mapping import Unmappable, render_turns, text_of

SHAREGPT = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "system_tag": "system"}
OPENAI = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
          "system_tag": "system"}


@dataclass(frozen=True)
class Dialogue:
    """A conversation cut where the preferred answer starts: the turns before it, and the system prompt."""

    turns: tuple[tuple[str, str], ...]  # ("user" | "assistant", text), ending with a user turn
    system: str = ""

    @property
    def prompt(self) -> str:
        return render_turns(list(self.turns))


def read_turns(messages, tags: dict = OPENAI, name: str = "messages") -> tuple[list[tuple[str, str]], str]:
    """(turns, system) of a message list; roles mapped to "user" / "assistant", a leading system turn lifted out."""
    if not isinstance(messages, list) or not messages:
        raise Unmappable("bad_field", f"{name!r} is not a non-empty list of messages")
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags.get("system_tag", "system"): "system"}
    turns, system = [], ""
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or tags["role_tag"] not in m or tags["content_tag"] not in m:
            raise Unmappable("bad_field", f"{name}[{k}] is not a {{{tags['role_tag']}, {tags['content_tag']}}} message")
        role = roles.get(m[tags["role_tag"]])
        if role is None:
            raise Unmappable("bad_field", f"{name}[{k}]: unknown role {m[tags['role_tag']]!r}")
        text = text_of(m[tags["content_tag"]], f"{name}[{k}]")
        if role == "system":
            if k:
                raise Unmappable("bad_field", f"{name}[{k}]: a system message after the first")
            system = text
            continue
        turns.append((role, text))
    return turns, system


def prompt_dialogue(turns: list[tuple[str, str]], system: str, name: str) -> Dialogue:
    """The turns as a prompt: alternating, starting and ending with a user turn, no empty text."""
    if not turns or turns[-1][0] != "user" or turns[0][0] != "user":
        raise Unmappable("bad_conversation", f"{name}: the prompt turns must start and end with a user turn")
    for k, (role, text) in enumerate(turns):
        if k and role == turns[k - 1][0]:
            raise Unmappable("bad_conversation", f"{name}: two {role} turns in a row at {k}")
        if not text.strip():
            raise Unmappable("empty_text", f"{name}: turn {k} is empty")
    return Dialogue(tuple(turns), system)


def split_last_answer(turns: list[tuple[str, str]], name: str) -> tuple[list[tuple[str, str]], str]:
    """(prompt turns, final assistant text) of a whole conversation."""
    if len(turns) < 2 or turns[-1][0] != "assistant":
        raise Unmappable("bad_conversation", f"{name}: does not end with an assistant answer")
    answer = turns[-1][1]
    if not answer.strip():
        raise Unmappable("empty_text", f"{name}: the final answer is empty")
    return turns[:-1], answer


def answer_text(value, tags: dict = OPENAI, name: str = "answer") -> str:
    """An answer given as a string, one message object, or a list of messages (the last one's text)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict) and tags["content_tag"] in value:
        text = text_of(value[tags["content_tag"]], name)
    elif isinstance(value, list) and value and isinstance(value[-1], dict) and tags["content_tag"] in value[-1]:
        text = text_of(value[-1][tags["content_tag"]], name)
    else:
        raise Unmappable("bad_field", f"{name!r} is not a string or a message")
    if not text.strip():
        raise Unmappable("empty_text", f"{name!r} is empty")
    return text
