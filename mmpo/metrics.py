"""Metric logging: one JSON line per logged step (and optional tensorboard), plus throughput and memory.

Metric names follow TRL's DPO trainer (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`), so curves from both tools line up.
"""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch


def peak_memory_gb() -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


class MetricLogger:
    """Averages metrics over the micro-batches of a step and appends them to `metrics.jsonl`.

    `start_step` is the step training (re)starts from: rows logged after it by an interrupted run (or all
    rows of an earlier run, when starting at 0) are dropped, so a resumed run logs each step exactly once.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = False, enabled: bool = True, start_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled and self.path.exists():
            kept = [row for row in _rows(self.path) if row.get("step", 0) <= start_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.writer = None
        if tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.window_start = time.perf_counter()
        self.window_pairs = 0
        self.window_tokens = 0

    def add(self, metrics: dict[str, float], pairs: int = 0, tokens: int = 0) -> None:
        """Accumulate one micro-batch's metrics and work done."""
        for k, v in metrics.items():
            self.sums[k] += float(v)
            self.counts[k] += 1
        self.window_pairs += pairs
        self.window_tokens += tokens

    def flush(self, step: int, extra: dict[str, float]) -> dict[str, float]:
        """Write the step's averaged metrics plus throughput; returns what was written."""
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        row = {k: self.sums[k] / self.counts[k] for k in self.sums}
        row.update(extra)
        row.update({"step": step, "pairs_per_s": self.window_pairs / elapsed,
                    "tokens_per_s": self.window_tokens / elapsed, "peak_mem_gb": peak_memory_gb()})
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.writer is not None:
                for k, v in row.items():
                    if k != "step":
                        self.writer.add_scalar(k, v, step)
        self.sums.clear()
        self.counts.clear()
        self.window_start, self.window_pairs, self.window_tokens = time.perf_counter(), 0, 0
        return row

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _rows(path: Path) -> list[dict]:
    """Rows of a metrics.jsonl; unreadable lines (a torn last line of a killed run) are dropped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return _rows(path) if path.exists() else []
