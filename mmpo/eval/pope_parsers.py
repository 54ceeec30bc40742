"""POPE answer parsers: the reference rules that turn a model's raw answer into "yes" / "no" / "unknown".

Split out of `mmpo/eval/pope.py` (which re-exports every name here); see docs/BENCHMARKS.md §1.4:
the official `evaluate.py`, lmms-eval `tasks/pope/utils.py`, VLMEvalKit `YOrN_Extraction` (current, and
its pre-May-2025 period pattern as `vlmevalkit_pre2025`).
"""

from __future__ import annotations

import re


def parse_official(text: str) -> str:
    """AoiDragon/POPE `evaluate.py` (= LLaVA `llava/eval/eval_pope.py`); never "unknown".

    First sentence (split on '.'), commas removed, split on single spaces; "no" if a token is exactly
    `No`, `no` or `not`, else "yes" (so "", "NO", "Nope" and "No\\nThe ..." all count as yes).
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def parse_lmms(text: str) -> str:
    """lmms-eval `tasks/pope/utils.py::pope_process_results`: exact match of `lower().strip()`."""
    pred = text.lower().strip()
    return pred if pred in ("yes", "no") else "unknown"


_VLM_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
              "?", "!"]
_VLM_COMMA = re.compile(r"(\d)(,)(\d)")
# VLMEvalKit's period pattern, current form (commit 928a95b0, 2025-05-13, "Fix SyntaxWarning ..."): a real
# look-behind, so a '.' is removed only when it has no digit on either side ("3.Yes" keeps its period).
_VLM_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
# The pattern before that commit, literally '(?!<=\d)(\.)(?!\d)': '(?!<=\d)' is a look-AHEAD for the text
# "<=" + digit, always true in front of a '.', so every '.' not followed by a digit is removed. Kept verbatim.
_VLM_PERIOD_PRE2025 = re.compile(r"(?!<=\d)(\.)(?!\d)")


def _vlm_process_punctuation(text: str, period: re.Pattern = _VLM_PERIOD) -> str:
    """VLMEvalKit `vlmeval/smp/misc.py::process_punctuation`, verbatim behaviour.

    Args:
        text: the (lower-cased) answer.
        period: the period pattern: `_VLM_PERIOD` (current VLMEvalKit) or `_VLM_PERIOD_PRE2025`.
    """
    out = text
    for p in _VLM_PUNCT:
        if (p + " " in text or " " + p in text) or _VLM_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The reference passes re.UNICODE (=32) as the *count* argument of sub(): at most 32 periods go. Both
    # versions do; so the two patterns also differ when digit-adjacent periods use up the 32 (see tests).
    return period.sub("", out, 32)


def _yorn(words: list[str]) -> str:
    """`YOrN_Extraction`'s decision: yes if 'yes' in words and 'no' not, no if the reverse, else unknown."""
    if "yes" in words and "no" not in words:
        return "yes"
    if "yes" not in words and "no" in words:
        return "no"
    return "unknown"


def parse_vlmevalkit(text: str) -> str:
    """VLMEvalKit `vlmeval/dataset/utils/yorn.py::YOrN_Extraction` (exact_matching, no LLM judge), as at HEAD.

    Lower-case, strip punctuation (current period pattern), split on whitespace, then `_yorn`.
    """
    return _yorn(_vlm_process_punctuation(text.lower()).split())


def parse_vlmevalkit_pre2025(text: str) -> str:
    """`YOrN_Extraction` before VLMEvalKit commit 928a95b0 (2025-05-13): the old period pattern.

    For comparing with numbers VLMEvalKit produced before that change; otherwise identical to `parse_vlmevalkit`.
    """
    return _yorn(_vlm_process_punctuation(text.lower(), _VLM_PERIOD_PRE2025).split())


PARSERS = {"official": parse_official, "lmms": parse_lmms, "vlmevalkit": parse_vlmevalkit,
           "vlmevalkit_pre2025": parse_vlmevalkit_pre2025}
# How each reference counts "unknown": lmms-eval scores it wrong and drops it from precision/recall
# (neither TP, FP nor FN); VLMEvalKit scores it wrong and maps it to predicted-No in F1 (POPE_rating).
UNKNOWN_AS_NO = {"official": False, "lmms": False, "vlmevalkit": True, "vlmevalkit_pre2025": True}
