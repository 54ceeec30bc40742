"""Deterministic kernels and the record of what a run's numbers depend on.

Why: a research tool is trusted when a rerun with the same seed gives the same numbers. On one CPU thread torch's
kernels are already deterministic for identical inputs; on GPUs several kernels (scatter/index_add backward,
cuBLAS split-K reductions, cuDNN autotuning) are not unless asked. `make_deterministic` asks, and `environment` writes down
what the numbers also depend on (library versions, thread count, device), so two runs can be compared. Seeding
is the trainer's `seed_everything` (Python, numpy, torch: every CUDA device too), on or off.
See README "Reproducibility" for the contract.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

# cuBLAS needs a fixed workspace for deterministic GEMMs (CUDA >= 10.2); must be set before the first cuBLAS call.
CUBLAS_WORKSPACE = ":4096:8"


def make_deterministic() -> None:
    """Ask torch for deterministic kernels everywhere it can give them, erroring on ones that have none.

    warn_only=False: an op without a deterministic implementation raises instead of silently varying; the
    error names the op (then leave `deterministic` off for that run, and say so)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: a per-run choice
    if hasattr(torch.backends.cuda, "matmul"):
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 rounding differs between kernel choices
    torch.backends.cudnn.allow_tf32 = False


def environment(seed: int, deterministic: bool) -> dict:
    """What a run's numbers depend on besides its config: versions, threads, device, the determinism switches."""
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover - peft is a core dependency
        peft_version = None
    return {
        "seed": seed,
        "deterministic": deterministic,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    }
