"""CUDA-only checks (marked `gpu`, skipped without CUDA): bf16 LoRA, 4-bit QLoRA and 8-bit AdamW training steps."""

import pytest
import torch
from helpers import tiny_model, toy_pairs

from mmpo.config import TrainConfig, load
from mmpo.metrics import read_metrics
from mmpo.trainer import train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("extra", [["precision=bf16", "model.dtype=bfloat16"],
                                   ["precision=bf16", "model.load_in_4bit=true", "gradient_checkpointing=true"],
                                   # r=32: LoRA matrices of >= 4096 elements, so AdamW8bit keeps 8-bit states
                                   ["precision=bf16", "model.dtype=bfloat16", "optimizer=adamw_8bit", "lora.r=32"]],
                         ids=["bf16_lora", "qlora_4bit", "bf16_lora_adamw8bit"])
def test_tiny_llava_trains_on_cuda(tmp_path, extra):
    model = tiny_model("llava", tmp_path)
    pairs = toy_pairs(tmp_path / "d")
    cfg = load(TrainConfig, None, [f"model.path={model}", f"data.train={pairs}", f"output_dir={tmp_path / 'r'}",
                                   "model.device=cuda", "progress=false", "lora.r=4", "lr=5e-3", "max_steps=3", *extra])
    train(cfg)
    rows = read_metrics(tmp_path / "r")
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["peak_mem_gb"] > 0
