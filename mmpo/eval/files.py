"""Reading benchmark files so that every problem names the file and the line, item or key.

Every scorer reads JSON or JSONL written by someone else (the benchmark's release, another harness, a hand-edited
answers file). Python's own messages for a bad file ("Unterminated string ... line 1 column 28", a codec error,
`int()`'s "invalid literal", a bare KeyError) name neither the file nor the record, so the readers here turn each
into `ValueError("<file>:<line>: ...")` (JSONL, and JSON syntax errors) or `"<file>: <item or key>: ..."` (items of
a JSON document, which the json module does not place on lines). `mmpo eval` prints that one line.
Pure Python (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpo.records import jsonl_lines


def read_text(path: str | Path) -> str:
    """A file's text: UTF-8 (a leading byte-order mark dropped); other bytes are an error naming line and byte."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
                         "benchmark files are UTF-8 text") from None
    return text[1:] if text.startswith("\ufeff") else text


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def parse_json(text: str, where: str, unique_keys: bool = False):
    """`json.loads(text)`; a syntax error names `where`, line and column; with `unique_keys`, a key repeated in one
    object (json keeps the last one silently: a repeated id) is an error naming it."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys if unique_keys else None)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except _DuplicateKey as e:
        raise ValueError(f"{where}: key {e.args[0]!r} appears twice in one JSON object (a repeated id); "
                         "each must appear once") from None


def load_json(path: str | Path, unique_keys: bool = False):
    """A JSON file (see `read_text`, `parse_json`)."""
    return parse_json(read_text(path), str(path), unique_keys)


def load_array(path: str | Path, what: str = "items") -> list:
    """A JSON file that must hold an array (of `what`)."""
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}:1: expected a JSON array of {what}, got a JSON {json_type(data)}")
    return data


def read_jsonl(path: str | Path, text: str | None = None) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; a bad line names `file:line`."""
    text = read_text(path) if text is None else text
    out = []
    for n, line in enumerate(jsonl_lines(text), 1):  # "\n" only: answers may hold U+2028 / U+0085
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got a JSON {json_type(rec)}")
        out.append((n, rec))
    return out


def load_annotations(path: str | Path) -> dict | list[tuple[int, dict]]:
    """A ground-truth file (CHAIR, POPE building), parsed once: a COCO instances dict, or a JSONL's (line, record)
    rows.

    Told by the parsed keys, not by a text prefix: the released `instances_val2014.json` puts `categories` last
    (after 160 MB of annotations). A file that parses as one JSON object with `images`, `annotations` or
    `categories` is COCO; anything else is read as JSONL (a one-line JSONL parses as an object without them).
    """
    text = read_text(path)
    head = text[:4096].lstrip()[:1]  # not the whole (160 MB) text
    if head == "{":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # several lines: JSONL
        if isinstance(whole, dict) and any(k in whole for k in ("images", "annotations", "categories")):
            return whole
    return read_jsonl(path, text)


def json_type(value) -> str:
    """The JSON name of a parsed value's type (for messages: "a JSON string", not "str")."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def need_object(value, where: str) -> dict:
    """`value` must be a JSON object; else an error naming `where` and what it is."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got a JSON {json_type(value)} {_short(value)}")
    return value


def need_str(value, where: str, allow_none: bool = False) -> str | None:
    """`value` must be a string (or null with `allow_none`): a number is not silently read as text."""
    if isinstance(value, str) or (allow_none and value is None):
        return value
    raise ValueError(f"{where}: expected a string{' or null' if allow_none else ''}, got a JSON "
                     f"{json_type(value)} {_short(value)}")


def need_int_id(value, where: str) -> int:
    """An integer id (COCO image ids): an int, or a string of decimal digits. Booleans, fractions
    (`1.9`) and other text are refused: `int()` would read `true` and `1.9` as image 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"{where}: expected an integer id, got a JSON {json_type(value)} {_short(value)}")


def need_str_list(value, where: str) -> list[str]:
    """A list of strings: a bare string would be read letter by letter."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a JSON array of strings, got {json_type(value)} {_short(value)}")
    return value


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) or len(value) < 60 else \
        json.dumps(value[:57] + "...", ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


UNANSWERED = ("error", "skip")  # `mmpo eval NAME --unanswered`: what a question without an answer means


def keep_answered(questions: list, answered: list[bool], unanswered: str, answers_path, ids: list) -> tuple[list, int]:
    """The questions an answers file answers, by the `unanswered` policy.

    A run with `on_bad_media: skip` writes answers only for the questions it could ask, so its own answers file
    lacks the rest: "error" (default: a file made elsewhere must answer everything) names the count, the first
    ids and the way out; "skip" scores the answered ones, as that run did, and reports how many were left out.

    Args:
        questions: every question, in order.
        answered: per question, whether the file answers it.
        unanswered: "error" | "skip".
        answers_path: the answers file (for the message).
        ids: per question, the id to name.

    Returns:
        (answered questions, how many were left out).
    """
    if unanswered not in UNANSWERED:
        raise ValueError(f"unanswered must be one of {UNANSWERED}, got {unanswered!r}")
    missing = [i for i, ok in zip(ids, answered) if not ok]
    if missing and unanswered == "error":
        raise ValueError(f"{answers_path}: {len(missing)} questions have no answer ({len(questions)} asked; first "
                         f"ids: {missing[:5]}); a run with on_bad_media: skip leaves out the questions on unreadable "
                         "media: add --unanswered skip to score the answered ones")
    kept = [q for q, ok in zip(questions, answered) if ok]
    if not kept:
        raise ValueError(f"{answers_path}: answers none of the {len(questions)} questions")
    return kept, len(missing)
