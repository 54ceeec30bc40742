"""Two CPU processes (gloo) through `accelerate launch`: both ranks end with identical parameters."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model, toy_pairs


@pytest.mark.slow
@pytest.mark.parametrize("precompute", ["false", "true"])  # true: rank 0 precomputes, rank 1 waits and reads
def test_two_process_training_keeps_ranks_in_sync(tmp_path, precompute):
    model = tiny_model("llava", tmp_path)
    pairs = toy_pairs(tmp_path / "data")
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(Path(__file__).parent / "ddp_train.py"),
           str(tmp_path), f"model.path={model}", f"data.train={pairs}", f"output_dir={tmp_path / 'run'}",
           "progress=false", "lora.r=4", "lr=5e-3", "max_steps=3", "batch_size=2",
           f"precompute_reference={precompute}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["sums"].keys() == ranks[1]["sums"].keys()
    for name, value in ranks[0]["sums"].items():
        assert value == pytest.approx(ranks[1]["sums"][name], abs=1e-6), name
    assert any(abs(v) > 0 for n, v in ranks[0]["sums"].items() if "lora_B" in n)  # it trained


def test_sharded_launchers_are_refused_with_a_clear_error():
    from accelerate.utils import DistributedType

    from mmpo.config import ConfigError
    from mmpo.trainer import check_distributed

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_distributed(str(kind))
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match="DDP"):
            check_distributed(str(kind))
