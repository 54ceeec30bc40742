"""Answers are tokenised on their own; check once per tokenizer that those are the tokens the model sees.

Training (`encode_answers`) and yes/no scoring (`yes_no_ids`) tokenise an answer WITHOUT its prompt and
place the ids after the prompt's ids. That is only right if they equal the tokens the answer gets inside
the rendered conversation, after the chat template's assistant header. For LLaVA-1.5 the template renders
"... ASSISTANT: Yes", so SentencePiece gives "▁Yes" (3869) and so does "Yes" alone with the checkpoint's own
settings. A tokenizer loaded with another `add_prefix_space` / legacy setting tokenises "Yes" alone as "Yes"
(8241): training would raise a token the model never produces after the prompt, and yes/no scoring would
read the wrong logit, both silently.

Why an error rather than encoding answers inside their context: such a tokenizer also changes the prompt
("USER" -> one token instead of "▁US", "ER"), so the only correct fix is loading the tokenizer with the
checkpoint's saved settings. The eval path's own suffix check (mmpo/eval/answering.py) guards prefix reuse; this
one guards the answer side.

    check_answer_tokens(processor)   # cached per tokenizer object; raises AnswerTokenError on a mismatch

A template may also put text between the generation prompt and the answer: SmolVLM's generation prompt ends
"Assistant:" with no space, and a rendered conversation reads "Assistant: Yes", so the model's first answer
token is " Yes" (9230), not "Yes" (10539). That is the template's layout, not a tokenizer setting: when the
rendered reply starts with whitespace that the generation prompt lacks, and the answers tokenised with that
whitespace in front equal the in-context tokens, and the tokenizer is byte-level BPE (which never adds a space
itself), the whitespace becomes the tokenizer's answer prefix
(`answer_prefix`), prepended by `answer_token_rows` everywhere answers are tokenised alone.
"""

from __future__ import annotations

import logging
import weakref

log = logging.getLogger(__name__)

# "Yes"/"No" in both cases (what yes/no scoring reads) and a sentence (what training appends)
PROBES = ("Yes", "No", "yes", "no", "The red square is on the left.")
PROBE_QUESTION = "Is there a red square in the image?"
_CHECKED: weakref.WeakSet = weakref.WeakSet()  # tokenizers checked (passed or uncheckable), by identity
_PREFIX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> answer prefix (when not "")


class AnswerTokenError(ValueError):
    """The answer tokens encoded alone differ from the tokens that follow the prompt in the chat template."""


def answer_token_rows(tokenizer, answers: list[str]) -> list[list[int]]:
    """Each answer's token ids on its own: no special tokens (no BOS), no EOS. What `encode_answers` pads.

    The tokenizer's answer prefix (found by `check_answer_tokens`, e.g. SmolVLM's " ") goes in front.
    """
    prefix = answer_prefix(tokenizer)
    return tokenizer([prefix + a for a in answers], add_special_tokens=False)["input_ids"]


def answer_prefix(processor) -> str:
    """Text the chat template puts between the generation prompt and the answer ("" for most; " " for SmolVLM)."""
    return _PREFIX.get(getattr(processor, "tokenizer", processor), "")


def check_answer_tokens(processor) -> None:
    """Raise AnswerTokenError if answers tokenised alone differ from the same answers after the prompt.

    Renders a user turn and an assistant turn holding each probe answer with the processor's chat template,
    tokenises the whole text, and takes the tokens whose characters overlap the answer. Runs once per
    tokenizer; a tokenizer without a chat template, or without character offsets, is not checked.

    Args:
        processor: a processor (its chat template is used) or a tokenizer.
    """
    tok = getattr(processor, "tokenizer", processor)
    if tok in _CHECKED:
        return
    gap = template_gap(processor)
    for probe in PROBES:
        in_context = answer_ids_in_context(processor, probe)
        if in_context is None:
            break  # nothing to compare against (logged once)
        alone = answer_token_rows(tok, [probe])[0]
        if alone != in_context and gap and _byte_level(tok) and \
                tok(gap + probe, add_special_tokens=False)["input_ids"] == in_context:
            _PREFIX[tok] = gap  # the template's own space before the answer (SmolVLM), not a tokenizer setting
            alone = answer_token_rows(tok, [probe])[0]
        if alone != in_context:
            _PREFIX.pop(tok, None)
            raise AnswerTokenError(_mismatch_message(tok, probe, alone, in_context))
    _CHECKED.add(tok)


def _byte_level(tok) -> bool:
    """A byte-level BPE (GPT-2 style) tokenizer: a space is a character it never adds itself, so a space in the
    template is the template's. SentencePiece / Metaspace tokenizers add the "▁" themselves, and there a missing
    one is the tokenizer setting the guard exists to catch (LLaVA-1.5 loaded with add_prefix_space=False)."""
    pre = getattr(getattr(tok, "backend_tokenizer", None), "pre_tokenizer", None)
    return pre is not None and "ByteLevel" in str(pre) and "Metaspace" not in str(pre)


def template_gap(processor) -> str:
    """Whitespace a rendered conversation has between the generation prompt and the answer ("" if none)."""
    tok = getattr(processor, "tokenizer", processor)
    render = processor if getattr(processor, "chat_template", None) else tok
    if not getattr(render, "chat_template", None):
        return ""
    user = [{"role": "user", "content": [{"type": "text", "text": PROBE_QUESTION}]}]
    probe = PROBES[-1]
    prompt = render.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = render.apply_chat_template(user + [{"role": "assistant", "content": [{"type": "text", "text": probe}]}],
                                      tokenize=False)
    if not full.startswith(prompt) or probe not in full[len(prompt):]:
        return ""
    gap = full[len(prompt):full.index(probe, len(prompt))]
    return gap if gap and not gap.strip() else ""


def answer_ids_in_context(processor, answer: str) -> list[int] | None:
    """Token ids of `answer` as the assistant's reply inside the rendered chat template.

    Returns:
        The ids of the tokens whose character spans overlap the answer (a token merging the answer with
        template text counts as the answer's, so the difference shows), or None if the template or the
        tokenizer cannot say (no template, answer not rendered, no offsets).
    """
    tok = getattr(processor, "tokenizer", processor)
    render = processor if getattr(processor, "chat_template", None) else tok
    if not getattr(render, "chat_template", None):
        log.debug("no chat template on %s: answer tokens not checked", type(processor).__name__)
        return None
    messages = [{"role": "user", "content": [{"type": "text", "text": PROBE_QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    text = render.apply_chat_template(messages, tokenize=False)
    start = text.rfind(answer)
    if start < 0:
        log.warning("the chat template does not render the assistant's answer; answer tokens not checked")
        return None
    end = start + len(answer)
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow (Python) tokenizers have no offsets
        log.debug("%s gives no offsets: answer tokens not checked", type(tok).__name__)
        return None
    return [i for i, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if e > s and s < end and e > start]


def _mismatch_message(tok, answer: str, alone: list[int], in_context: list[int]) -> str:
    show = lambda ids: f"{tok.convert_ids_to_tokens(ids)} {ids}"  # noqa: E731
    return (f"answer tokens differ from the tokens the model sees after the prompt: {answer!r} tokenised alone is "
            f"{show(alone)}, but as the assistant's reply in the chat template it is {show(in_context)}. "
            f"Training would learn, and yes/no scoring would read, tokens the model never produces after the "
            f"prompt. The tokenizer ({type(tok).__name__}, {_settings(tok)}) adds the SentencePiece '▁' / prefix "
            f"space differently from the checkpoint's own settings: load it as saved with the checkpoint, without "
            f"overriding add_prefix_space or legacy.")


def _settings(tok) -> str:
    """The tokenizer settings that decide the prefix space: attributes and the backend's Metaspace / ByteLevel."""
    parts = [f"{name}={getattr(tok, name)!r}" for name in ("add_prefix_space", "legacy") if hasattr(tok, name)]
    backend = getattr(tok, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    for attr in ("prepend_scheme", "add_prefix_space"):
        if pre is not None and hasattr(pre, attr):
            parts.append(f"{type(pre).__name__}.{attr}={getattr(pre, attr)!r}")
    normalizer = getattr(backend, "normalizer", None)
    if normalizer is not None:
        parts.append(f"normalizer={normalizer}")
    return ", ".join(parts) or "no prefix-space setting found"
