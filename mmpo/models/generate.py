"""Batched answer generation (greedy or sampled) for evaluation, self-QA building and on-policy pairs."""

from __future__ import annotations

import torch

from mmpo.models.inputs import encode_prompts


@torch.no_grad()
def generate_answers(model, processor, prompts: list[str], media, media_type: str | None, *,
                     num_samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 32,
                     top_p: float = 1.0, seed: int | None = None) -> list[list[str]]:
    """Generate `num_samples` answers per prompt.

    Args:
        model: a LLaVA-family model (or PeftModel).
        processor: its processor.
        prompts: B prompt texts (chat template applied here).
        media: B images / (T,H,W,3) videos, or None for text-only prompts.
        media_type: "image", "video" or None.
        num_samples: answers per prompt.
        temperature: 0 = greedy (the published evaluation protocol), else sampling temperature.
        max_new_tokens: generation length cap.
        top_p: nucleus sampling threshold when sampling.
        seed: seeds torch before sampling, so a rerun gives the same answers.

    Returns:
        B lists of `num_samples` decoded answers (special tokens removed, stripped).
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encode_prompts(processor, prompts, media, media_type).items()}
    if seed is not None:
        torch.manual_seed(seed)
    tok = processor.tokenizer
    sample = temperature > 0
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature if sample else None, top_p=top_p if sample else None,
                         num_return_sequences=num_samples, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    texts = [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]
