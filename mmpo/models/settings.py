"""What to load: the model layer's own settings, `ModelConfig` (a checkpoint and how to load it) and `LoraConfig`
(the adapter to train). `mmpo.config.TrainConfig` holds them; the evaluators and builders take a ModelConfig too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmpo.schema import Problems, check_choice, check_range


@dataclass
class ModelConfig:
    path: str = ""  # local folder of a Hugging Face checkpoint (any LLaVA family); never a hub id download
    adapter: str = ""  # optional PEFT adapter folder loaded on top of `path`
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    load_in_4bit: bool = False  # NF4 via bitsandbytes, double quant, compute in bf16 on CUDA / fp32 on CPU
    trust_remote_code: bool = False  # only if the user asks for it
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    num_frames: int = 8  # frames sampled per video for this model
    # image resolution (0 = the checkpoint's own); fewer pixels = fewer image tokens (docs/ARCHITECTURE.md)
    min_pixels: int = 0  # Qwen-VL: the fewest pixels an image is resized to (image processor size.shortest_edge)
    max_pixels: int = 0  # Qwen-VL: the most pixels an image is resized to (image processor size.longest_edge)
    image_longest_edge: int = 0  # SmolVLM/Idefics3: an image's longest side before it is cut into tiles

    def __post_init__(self):
        problems = Problems()
        with problems.check():
            check_range(self, num_frames=">= 1", min_pixels=">= 0", max_pixels=">= 0", image_longest_edge=">= 0")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            problems.errors.append(f"min_pixels ({self.min_pixels}) is above max_pixels ({self.max_pixels})")
        with problems.check():  # what mmpo.models.load_model accepts (its DTYPES), checked before any load
            check_choice(self, dtype=("float32", "bfloat16", "float16"),
                         attn_implementation=("eager", "sdpa", "flash_attention_2"))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            problems.errors.append(f"device: expected auto | cpu | cuda | cuda:N | mps, got {self.device!r}")
        problems.raise_any()


@dataclass
class LoraConfig:
    enabled: bool = True  # train a LoRA adapter (False: full fine-tuning of the language model)
    r: int = 16  # LoRA rank
    alpha: int = 32  # LoRA alpha (scale = alpha / r)
    dropout: float = 0.0  # LoRA dropout
    # regex over module names: the language model's linear layers only (the vision tower has q/k/v too)
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    train_projector: bool = False  # also train the multimodal projector (full weights)

    def __post_init__(self):
        check_range(self, r=">= 1", alpha="> 0", dropout="[0, 1)")
