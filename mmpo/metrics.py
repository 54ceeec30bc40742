"""Metric logging: one JSON line per logged step, the experiment trackers (`report_to`), throughput and memory.

Metric names follow TRL's DPO trainer (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`), so curves from both tools line up.

Trackers (`report_to: [tensorboard, wandb, mlflow, trackio, swanlab]`) go through accelerate's tracking classes
(`accelerate.tracking`, the ones `Accelerator(log_with=...)` uses), opened on the main process only: each gets
the resolved config (flattened, `lora.r`), the run's facts (data counts and skips), and every row written to
metrics.jsonl with its step. Each tracker's own settings come from its own environment variables
(`WANDB_MODE=offline`, `WANDB_DIR`, `MLFLOW_TRACKING_URI`, ...); wandb and swanlab write under the run
folder unless told otherwise. A tracker whose package is missing is an error naming the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch

from mmpo.config import ConfigError, check_report_to


def check_trackers(names: list[str], where: str = "report_to") -> None:
    """Every name is a known tracker whose package is installed (ConfigError naming the extra otherwise). Each
    tracker's module and pyproject extra carry its name (mlflow: the extra installs mlflow-skinny)."""
    check_report_to(names, where)
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"{where}: {name} needs the {name!r} package, which is not installed: "
                              f"pip install 'mmpo[{name}]'")


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested config dicts -> {"lora.r": 16, ...}; lists and None become strings (every tracker takes those)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)
    return out


def _make_tracker(name: str, run_dir: Path, project: str, run_name: str):
    """One accelerate tracker, its files under the run folder where the tracker keeps local files."""
    from accelerate import tracking

    if name == "tensorboard":
        return tracking.TensorBoardTracker("tensorboard", str(run_dir))  # -> run_dir/tensorboard (as before)
    if name == "wandb":
        return tracking.WandBTracker(project, name=run_name, dir=os.environ.get("WANDB_DIR", str(run_dir)))
    if name == "mlflow":
        return tracking.MLflowTracker(experiment_name=project, run_name=run_name)
    if name == "trackio":
        return tracking.TrackioTracker(project, name=run_name)
    return tracking.SwanLabTracker(project, experiment_name=run_name, logdir=str(run_dir / "swanlog"))


def _tensorboard_hparams(writer, scalars: dict) -> None:
    """The HParams summaries, into the run's own events file.

    accelerate's `store_init_configuration` (torch's `add_hparams`) opens a second writer in a new folder named
    by the time, and accelerate adds a third with an hparams.yml copy (the run folder has config.yaml already):
    one run showed as three in TensorBoard. Long strings do not fit an hparam; scalars only.
    """
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(scalars, metric_dict={}):
        writer._get_file_writer().add_summary(summary)
    writer.flush()


class Trackers:
    """The configured experiment trackers of one run (an empty list: nothing opened, every call a no-op)."""

    def __init__(self, names: list[str], run_dir: str | Path, project: str = "mmpo", run_name: str = "",
                 config: dict | None = None, enabled: bool = True):
        names = list(dict.fromkeys(names)) if enabled else []
        check_trackers(names)
        run_dir = Path(run_dir)
        self.trackers = []
        if names:  # accelerate's trackers log through its logger, which needs its state; the process group (if
            from accelerate import PartialState  # any) is already joined by mmpo, and PartialState reuses it

            PartialState()
        for name in names:
            tracker = _make_tracker(name, run_dir, project, run_name or run_dir.resolve().name)
            tracker.main_process_only = False  # opened on the main process only (no accelerate state needed)
            tracker.start()
            self.trackers.append(tracker)
        if config:
            self.store_config(config)

    def store_config(self, config: dict) -> None:
        """The run's settings and facts (resolved config, data counts), flattened."""
        flat = flatten(config)
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                _tensorboard_hparams(tracker.writer, {k: v for k, v in flat.items() if not isinstance(v, str)})
            else:
                tracker.store_init_configuration(flat)

    def log(self, values: dict, step: int | None = None) -> None:
        """Numbers (and short strings) at `step`."""
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


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

    def __init__(self, run_dir: str | Path, report_to: list[str] = (), enabled: bool = True, start_step: int = 0,
                 project: str = "mmpo", run_name: str = "", config: dict | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled and self.path.exists():
            kept = [row for row in _rows(self.path) if row.get("step", 0) <= start_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.trackers = Trackers(report_to, run_dir, project, run_name, config, enabled)
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
            self.trackers.log({k: v for k, v in row.items() if k != "step"}, step)
        self.sums.clear()
        self.counts.clear()
        self.window_start, self.window_pairs, self.window_tokens = time.perf_counter(), 0, 0
        return row

    def close(self) -> None:
        self.trackers.finish()


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
