"""Small fixtures shared by tests: tiny and real-format models on disk, random images, toy pair files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mmpo.records import PairRecord, SFTRecord, pair_id, write_jsonl

COLORS = ["red", "green", "blue", "yellow"]
# verbatim benchmark excerpts, vendored with the tests (provenance and licences: fixtures/samples/SOURCE.md)
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "samples"
_MODEL_CACHE: dict[tuple, Path] = {}


def tiny_model(family: str, root: Path, **kwargs) -> Path:
    """A tiny checkpoint of `family`, built once per test session and reused."""
    from mmpo.models import make_tiny_model

    key = (family, tuple(sorted(kwargs.items())))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = make_tiny_model(family, root / f"{family}-{len(_MODEL_CACHE)}", **kwargs)
    return _MODEL_CACHE[key]


def real_format_model(family: str, root: Path) -> Path:
    """A shrunk checkpoint in `family`'s real hub format (`make_real_format_model`), built once per session."""
    from mmpo.models.real_format import make_real_format_model

    key = ("real-format", family)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = make_real_format_model(family, root / f"real-{family}")
    return _MODEL_CACHE[key]


def checkpoint(name: str, root: Path) -> Path:
    """A test checkpoint by name: "llava" (tiny word-level, `tiny_model`) or "real:llava" (`real_format_model`)."""
    if name.startswith("real:"):
        return real_format_model(name.removeprefix("real:"), root)
    return tiny_model(name, root)


def color_question(color: str) -> str:
    """The question `yes_no_model` learns to answer."""
    return f"is there a {color} square in the image ?"


def yes_no_model(family: str, root: Path, media_type: str = "image", suffix: str = "", steps: int = 25) -> Path:
    """A tiny `family` checkpoint briefly fine-tuned to answer `color_question(c) + suffix` with "yes" + EOS for red
    and green and "no" + EOS otherwise, so greedy generation gives clean one-word answers (both of them).

    The rule is text-only; the media are colour squares (videos: 4 equal frames). llava learns it in 25 steps;
    llava_next_video's loss stays at ln 2 (always "yes") for 25 steps and needs about 80. Built once per test
    session for each argument set and reused.
    """
    key = ("yes-no", family, media_type, suffix, steps)
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    import torch

    from mmpo.config import ModelConfig
    from mmpo.logprobs import plain_logps
    from mmpo.models import encode_answers, encode_prompts, load_model

    model, proc = load_model(ModelConfig(path=str(tiny_model(family, root)), device="cpu"), trainable=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(steps):
        q = [COLORS[(step + k) % 4] for k in range(4)]
        media = [color_image(COLORS[(step + 2 * k) % 4], seed=k) for k in range(4)]
        if media_type == "video":
            media = [np.stack([np.asarray(m)] * 4) for m in media]
        ans = ["yes" if c in ("red", "green") else "no" for c in q]
        lp, _ = plain_logps(model, encode_prompts(proc, [color_question(c) + suffix for c in q], media, media_type),
                            encode_answers(proc, ans))
        opt.zero_grad()
        (-lp.mean()).backward()
        opt.step()
    out = root / f"yes-no-{family}-{len(_MODEL_CACHE)}"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    _MODEL_CACHE[key] = out
    return out


def color_image(color: str, size: int = 32, seed: int = 0) -> Image.Image:
    """A square of `color` on noise: a learnable signal for toy preference pairs."""
    rgb = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}[color]
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 60).astype("uint8")
    arr[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rgb
    return Image.fromarray(arr)


def toy_pairs(root: Path, n: int = 16, name: str = "pairs.jsonl") -> Path:
    """Image pairs "what color is the square ?": chosen = the true colour, rejected = another colour."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        color, wrong = COLORS[i % 4], COLORS[(i + 1) % 4]
        rel = f"img/{i}.png"
        color_image(color, seed=i).save(root / rel)
        prompt = "what color is the square ?"
        recs.append(PairRecord(id=pair_id([rel], prompt, color, wrong), media=(rel,), media_type="image",
                               prompt=prompt, chosen=color, rejected=wrong, meta={"gt": color},
                               scores={"delta": 0.25 * (i % 3)}))
    write_jsonl(root / name, recs)
    return root / name


def toy_sft(root: Path, n: int = 16, name: str = "sft.jsonl") -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        color = COLORS[i % 4]
        rel = f"img/s{i}.png"
        color_image(color, seed=100 + i).save(root / rel)
        recs.append(SFTRecord(id=f"s{i}", media=(rel,), media_type="image", prompt="what color is the square ?",
                              answer=color))
    write_jsonl(root / name, recs)
    return root / name
