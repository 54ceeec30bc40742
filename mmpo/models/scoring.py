"""Score a yes/no question by the model's next-token logits: log-odds of "yes" against "no".

score(w) = logsumexp of the logits of the first token of each case variant of w ("Yes", "yes") that the
tokenizer has as a distinct, known token; the softmax normaliser cancels in the difference, so
`margin` = score(yes) - score(no) is a log-odds between the two answers. Used by evaluation's logits mode
(mmpo/eval/answering.py) and by the self-QA builder's yes/no judge (mmpo/builders/judging.py).
"""

from __future__ import annotations

import torch

from mmpo.models.answer_tokens import answer_token_rows, check_answer_tokens
from mmpo.models.inputs import encode_prompts, media_keys
from mmpo.models.positions import TOKEN_TYPES_KEY, prompt_positions

YES_VARIANTS, NO_VARIANTS = ("Yes", "yes"), ("No", "no")


def answer_token_ids(processor, variants: tuple[str, ...]) -> list[int]:
    """First token id of each case variant, de-duplicated; unknown tokens are dropped.

    Llama's SentencePiece has distinct "▁Yes"/"▁yes"; the tiny word-level tokenizer lower-cases, so both
    map to one id. Taking logsumexp over the variants scores the answer, not one spelling of it.
    """
    tok = getattr(processor, "tokenizer", processor)
    ids = []
    for word in variants:
        first = answer_token_rows(tok, [word])[0][:1]  # with the template's answer prefix (SmolVLM: " Yes")
        if first and first[0] != tok.unk_token_id and first[0] not in ids:
            ids.append(first[0])
    if not ids:
        raise ValueError(f"none of {variants} is a known token of this tokenizer")
    return ids


def yes_no_margin(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    """[B, V] next-token logits -> [B] logsumexp(yes variants) - logsumexp(no variants), in float32."""
    logits = logits.float()
    return torch.logsumexp(logits[:, yes_ids], -1) - torch.logsumexp(logits[:, no_ids], -1)


@torch.no_grad()
def margins_plain(model, processor, prompts: list[str], media: list, media_type: str, ids: tuple) -> list[float]:
    """Margins with one left-padded forward over full prompts (the reference path)."""
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in encode_prompts(processor, prompts, media, media_type).items()}
    types = {TOKEN_TYPES_KEY: batch[TOKEN_TYPES_KEY]} if TOKEN_TYPES_KEY in batch else {}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=prompt_positions(model, batch), logits_to_keep=1, use_cache=False,
                **types, **{k: batch[k] for k in media_keys(batch)})
    return yes_no_margin(out.logits[:, -1], *ids).tolist()


def yes_no_ids(processor) -> tuple[list[int], list[int]]:
    """(yes variant ids, no variant ids) for `yes_no_margin` / `margins_plain`.

    Checks first (once per tokenizer) that "Yes"/"No" tokenised alone are the tokens that follow the prompt
    in the chat template, so the ids are the logits the model's answer is read from (`check_answer_tokens`).
    """
    check_answer_tokens(processor)
    return answer_token_ids(processor, YES_VARIANTS), answer_token_ids(processor, NO_VARIANTS)
