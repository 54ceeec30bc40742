"""CLIP scoring with open_clip: image/video-text similarity and media-media similarity.

Used by the builders (VideoSAVi-style CLIP filtering of answers, DA-DPO-style contrastive scores,
a prefilter that drops augmentations too close to the original). The synthetic demo trains a tiny CLIP
made here (`demo.image_models.contrastive_train`).

Checkpoints are open_clip `local-dir:` folders (`open_clip_config.json` with `model_cfg` and
`preprocess_cfg`, plus `open_clip_model.safetensors`), loaded offline. `make_tiny_clip` writes a
randomly initialised one from a custom tiny config (shared ENVIRONMENT notes §2b).

Scores, all cosine similarities of L2-normalised embeddings, under `torch.no_grad`:
- `frame_text_similarity`: s_clip(y) = mean over frames of cos(CLIP_img(frame), CLIP_txt(y)); a
  text longer than the context is split into sentences whose scores are averaged (docs/METHODS.md §2,
  VideoSAVi reconstruction; DA-DPO scores long answers the same way).
- `media_similarity`: cosine of the mean frame embeddings of two images/clips (blind to frame order, so the
  augment builder's prefilter compares aligned frames instead).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LOCAL_DIR = "local-dir:"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
# CLIP's own normalisation constants (openai/CLIP, open_clip OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def tiny_clip_config(image_size: int = 64, embed_dim: int = 64, width: int = 64, layers: int = 2,
                     patch_size: int = 16, context_length: int = 32) -> dict:
    """open_clip `model_cfg` of a tiny ViT CLIP (the shape measured in shared ENVIRONMENT notes §3).

    Args:
        image_size: input resolution (a multiple of `patch_size`).
        embed_dim: joint embedding size.
        width: transformer width of both towers (heads of 32 dims).
        layers: transformer layers of both towers.
        patch_size: ViT patch size.
        context_length: text context in tokens (including start/end tokens).

    Returns:
        dict for `open_clip_config.json["model_cfg"]`.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                       "patch_size": patch_size, "head_width": 32},
        # vocab_size is fixed by open_clip's bundled BPE tokenizer (SimpleTokenizer, 49408 entries).
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width,
                     "heads": max(1, width // 32), "layers": layers},
    }


def save_weights(model: torch.nn.Module, out_dir: str | Path) -> None:
    """Write an open_clip model's weights into a `local-dir:` folder (next to its config)."""
    from safetensors.torch import save_file

    # contiguous() + clone: safetensors refuses non-contiguous or storage-sharing tensors.
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(Path(out_dir) / WEIGHTS_NAME))


def make_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 64, embed_dim: int = 64,
                   width: int = 64, layers: int = 2, patch_size: int = 16, context_length: int = 32) -> Path:
    """Write a randomly initialised tiny open_clip checkpoint as a `local-dir:` folder.

    Args:
        out_dir: folder to create (or overwrite).
        seed: torch seed for the initial weights (the global RNG state is left untouched).
        image_size, embed_dim, width, layers, patch_size, context_length: see `tiny_clip_config`.

    Returns:
        The folder path; `load_clip(path)` reads it.
    """
    import open_clip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = tiny_clip_config(image_size, embed_dim, width, layers, patch_size, context_length)
    preprocess_cfg = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                      "resize_mode": "shortest"}
    (out_dir / CONFIG_NAME).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                  indent=2))
    stale = out_dir / WEIGHTS_NAME
    if stale.exists():
        stale.unlink()  # open_clip would otherwise load the old weights instead of a fresh init
    # open_clip warns on the root logger that no weights were found: a random init is the point here.
    logging.disable(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(LOCAL_DIR + str(out_dir), device="cpu")
    finally:
        logging.disable(logging.NOTSET)
    save_weights(model, out_dir)
    return out_dir


class ClipScorer:
    """A CLIP model in eval mode with its preprocessing and tokenizer.

    Attributes:
        model: the open_clip model (eval mode; the demo may train it, then call `model.eval()`).
        preprocess: PIL image -> normalised tensor (3, S, S) (open_clip's eval transform).
        tokenizer: list[str] -> LongTensor [N, context_length].
        device: torch device the model runs on.
        batch_size: images or texts encoded per forward pass.
    """

    def __init__(self, model, preprocess, tokenizer, device: str | torch.device = "cpu", batch_size: int = 64):
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    @property
    def context_length(self) -> int:
        """Text context in tokens, including the start and end tokens."""
        return int(getattr(self.tokenizer, "context_length", None) or self.model.context_length)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
        """L2-normalised image embeddings.

        Args:
            images: RGB PIL images, or a (T, H, W, 3) uint8 array of frames.

        Returns:
            Tensor [N, D] (float32, on CPU).
        """
        images = _as_pil_list(images)
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([self.preprocess(im) for im in images[i:i + self.batch_size]]).to(self.device)
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (texts past the context are truncated; see `frame_text_similarity`).

        Args:
            texts: strings.

        Returns:
            Tensor [N, D] (float32, on CPU).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i:i + self.batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        """Size of the joint embedding."""
        proj = getattr(self.model, "text_projection", None)
        return int(proj.shape[-1]) if proj is not None else int(self.model.visual.output_dim)

    def split_text(self, text: str) -> list[str]:
        """Split a text that does not fit the context into sentences (DA-DPO / VideoSAVi practice:
        score each sentence and average). A text that fits is returned whole; a single sentence that
        is still too long is truncated by the tokenizer.

        Args:
            text: one answer or caption.

        Returns:
            Non-empty list of pieces.
        """
        limit = self.context_length - 2  # start and end tokens
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None or len(encode(text)) <= limit:
            return [text]
        pieces = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
        return pieces or [text]

    @torch.no_grad()
    def frame_text_similarity(self, frames: np.ndarray | Image.Image | Sequence[Image.Image],
                              texts: Sequence[str]) -> torch.Tensor:
        """s_clip(y) = mean over frames of cos(CLIP_img(frame), CLIP_txt(y)) for each text.

        Long texts are split into sentences and their scores averaged (`split_text`).

        Args:
            frames: (T, H, W, 3) uint8 video, one PIL image, or a list of PIL images.
            texts: candidate texts (answers, captions).

        Returns:
            Tensor [len(texts)] of mean cosine similarities.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        img = self.encode_images(frames)                        # [T, D]
        pieces = [self.split_text(t) for t in texts]
        flat = [p for ps in pieces for p in ps]
        sims = (img @ self.encode_texts(flat).T).mean(dim=0)    # [sum pieces], mean over frames
        owner = torch.tensor([i for i, ps in enumerate(pieces) for _ in ps])
        total = torch.zeros(len(texts)).index_add_(0, owner, sims)
        return total / torch.tensor([len(ps) for ps in pieces], dtype=torch.float32)

    @torch.no_grad()
    def media_embedding(self, media: np.ndarray | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised mean of the frame embeddings of an image or clip.

        Args:
            media: (T, H, W, 3) uint8 video, one PIL image, or a list of PIL images.

        Returns:
            Tensor [D].
        """
        return F.normalize(self.encode_images(media).mean(dim=0), dim=-1)

    @torch.no_grad()
    def media_similarity(self, a, b) -> float:
        """Cosine similarity of the mean frame embeddings of two images or clips (1 = same content).

        Args:
            a: (T, H, W, 3) uint8 video, PIL image, or list of PIL images.
            b: same kinds as `a` (sizes and frame counts may differ).

        Returns:
            float in [-1, 1].
        """
        return float(self.media_embedding(a) @ self.media_embedding(b))


def _as_pil_list(images) -> list[Image.Image]:
    """One PIL image, a list of them, or a (T,H,W,3)/(H,W,3) uint8 array -> list of RGB PIL images."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, np.ndarray):
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (T,H,W,3), got {images.shape}")
        return [Image.fromarray(np.ascontiguousarray(f, dtype=np.uint8)) for f in arr]
    return [im.convert("RGB") for im in images]


def load_clip(path_or_name: str | Path, device: str | torch.device = "cpu", batch_size: int = 64) -> ClipScorer:
    """Load an open_clip checkpoint offline.

    Args:
        path_or_name: a `local-dir:` folder (with or without the prefix), or an open_clip model name
            such as "ViT-B-32" (random init unless its weights are cached locally).
        device: torch device.
        batch_size: images or texts per forward pass.

    Returns:
        ClipScorer with the model in eval mode.
    """
    import open_clip

    name = str(path_or_name)
    if ":" not in name and ("/" in name or "\\" in name) and not Path(name).exists():
        # open_clip would read it as a model name, mangle the slashes and list its ~150 built-in names
        raise FileNotFoundError(f"{name}: no such folder (expected an open_clip local-dir checkpoint folder, or a "
                                "model name such as 'ViT-B-32')")
    if not name.startswith(LOCAL_DIR) and Path(name).is_dir():
        if not (Path(name) / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{name}: not an open_clip local-dir checkpoint (no {CONFIG_NAME})")
        name = LOCAL_DIR + name
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    return ClipScorer(model, preprocess, open_clip.get_tokenizer(name), device, batch_size)
