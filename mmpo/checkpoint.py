"""Atomic training checkpoints with everything exact resume needs.

A checkpoint is a folder `checkpoints/step-N/` holding `state.pt`: the trainable parameters (LoRA
weights, or every trainable weight for full fine-tuning), optimizer and scheduler states, the RNG
states of python / numpy / torch (and CUDA), the loss terms' own states (beta-DPO's running
statistics), and the data position (the global micro-batch index; the data order is a pure function
of seed and epoch, so the position is all the sampler needs). It is written to a temporary folder and
renamed into place, then `checkpoints/latest` is replaced atomically, so a run killed at any moment
leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmpo.config import ConfigError, from_dict, safe_load, save, to_dict

log = logging.getLogger(__name__)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The parameters that training changes (requires_grad), by name, on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """RNG states as tensors and plain values (numpy's key array becomes a tensor), so the safe loader reads them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, scheduler, extra: dict, procs,
                    keep_last: int = 0) -> Path:
    """Write `run_dir/checkpoints/step-{step}` atomically and point `latest` at it. Every rank calls it.

    Each rank writes `rank{r}.pt`: its RNG state and `extra` (its skipped records, loss statistics), which differ
    between ranks, plus the step and the number of processes. The weights: one process or DDP, the main process
    writes `state.pt` (every rank holds the same ones); FSDP2, the ranks write their shards of the trainable
    parameters and optimizer state together with `torch.distributed.checkpoint` (no rank holds them all).

    Args:
        run_dir: the run directory.
        step: optimizer steps done.
        model: the policy (trainable parameters are saved).
        optimizer: its state is saved.
        scheduler: its state is saved.
        extra: this rank's state to restore (counters, loss states, skipped records).
        procs: the `mmpo.distributed.Processes`.
        keep_last: prune to the newest `keep_last` checkpoints once this one is in place (0 = keep all).

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointWriteError: some rank could not write its part (e.g. a full disk); the half-written folder is
            removed and `latest` still points at the previous checkpoint.
    """
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if procs.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    procs.barrier()
    error = None
    try:
        if procs.sharded:
            import torch.distributed.checkpoint as dcp

            model_state, optim_state = _sharded_state(model, optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
        elif procs.is_main:
            _write(tmp / "state.pt", {"params": trainable_state(model), "optimizer": optimizer.state_dict()})
        _write(tmp / f"rank{procs.rank}.pt", {"step": step, "world": procs.world, "sharded": procs.sharded,
                                              "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra})
    except (OSError, RuntimeError) as exc:  # a full disk, a quota: every rank must hear of it (no one waits forever)
        error = exc
    from mmpo.distributed import all_ranks

    # every rank's part is written before the folder becomes the latest checkpoint
    if not all_ranks(error is None, procs.world, procs.device):
        if procs.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(write_failure(final, error, latest_checkpoint(run_dir))) from error
    if procs.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / ".latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, root / "latest")
        if keep_last:
            prune_checkpoints(root, keep_last)
    procs.barrier()
    return final


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota); the one before it is left as it was."""


def _write(path: Path, obj) -> None:
    """torch.save through a Python file, fsynced: a full disk then raises OSError(ENOSPC) naming the problem, where
    torch's own file writer reports only "[enforce fail at inline_container.cc] unexpected pos"."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it, on any rank's side of a collective) is a full disk or quota."""
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_failure(final: Path, error: BaseException | None, previous: Path | None) -> str:
    """The message for a checkpoint that could not be written: which one, why, and what is still there."""
    if error is None:
        why = "another process could not write its part"
    elif _is_disk_full(error):
        try:
            free = f"; {shutil.disk_usage(final.parent).free / 2**20:.1f} MiB free"
        except OSError:
            free = ""
        why = f"no space left on device{free}"
    else:
        why = str(error).splitlines()[0] if str(error) else type(error).__name__
    kept = (f"the previous checkpoint {previous} is intact, and a rerun resumes from it" if previous
            else "no earlier checkpoint exists")
    return f"{final}: checkpoint not saved: {why}; {kept}"


def prune_checkpoints(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step folders under `root` (save_total_limit); `latest`'s is always kept."""
    steps = sorted((p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else ""
    removed = [p for p in steps[:-keep] if p.name != latest]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _sharded_state(model, optimizer):
    """The trainable parameters' and the optimizer's sharded state dicts (FSDP2), frozen weights left out."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `checkpoints/latest` points at, or None for a fresh run."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "rank0.pt").is_file() else None


def _safe_load(path: Path) -> dict:
    try:  # tensors and plain values only: a checkpoint folder is a file anyone with write access could replace
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refusing to load a checkpoint that holds more than tensors and plain "
                         f"values: {str(exc).splitlines()[0]}") from None


def load_checkpoint(path: str | Path, model, optimizer, scheduler, procs) -> tuple[int, dict]:
    """Restore parameters, optimizer, scheduler and RNG from a checkpoint folder (as `save_checkpoint` wrote it).

    Returns:
        (step, this rank's extra) as saved.
    """
    path = Path(path)
    first = _safe_load(path / "rank0.pt")
    if (first.get("world"), first.get("sharded")) != (procs.world, procs.sharded):
        how = lambda world, sharded: f"{world} process(es){' with FSDP sharding' if sharded else ''}"  # noqa: E731
        raise ValueError(f"{path}: written by {how(first.get('world'), first.get('sharded'))}; resume it the same "
                         f"way it ran, not with {how(procs.world, procs.sharded)}")
    own = first if procs.rank == 0 else _safe_load(path / f"rank{procs.rank}.pt")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if procs.sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        model_state, optim_state = _sharded_state(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path))
        # strict=False because the frozen weights are not in the checkpoint (they come from model.path); every
        # trainable one must be.
        result = set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                                options=StateDictOptions(ignore_frozen_params=True, strict=False))
        mismatch = sorted(trainable & set(result.missing_keys)) + sorted(result.unexpected_keys)
    else:
        state = _safe_load(path / "state.pt")
        params = dict(model.named_parameters())
        mismatch = sorted(set(state["params"]) ^ trainable)
        if not mismatch:
            with torch.no_grad():
                for name, value in state["params"].items():
                    params[name].copy_(value.to(params[name].device, params[name].dtype))
            optimizer.load_state_dict(state["optimizer"])
    if mismatch:
        raise ValueError(f"{path}: checkpoint does not match the model's trainable parameters (e.g. {mismatch[0]!r})")
    scheduler.load_state_dict(own["scheduler"])
    set_rng_state(own["rng"])
    return own["step"], own["extra"]


# -- reruns into a run folder --------------------------------------------------------------------

def check_rerun(cfg, run_dir: Path, procs) -> None:
    """Refuse to resume (or overwrite) a run folder whose saved config differs from this one; then write this one.

    A rerun into a run's folder resumes from its last checkpoint; with another lr, loss or data it would mix
    two runs and rewrite config.yaml with values that never ran. Settings that do not change what is computed
    (RERUN_EXEMPT) may differ, and keys the saved config lacks (a field added since) count at their defaults;
    `allow_config_change=true` accepts the rest (the old config is kept beside). Every rank compares before the
    main one replaces the file.
    """
    saved_path = run_dir / "config.yaml"
    changed = changed_keys(cfg, saved_path) if saved_path.is_file() and has_results(run_dir) else {}
    if changed and not cfg.allow_config_change:
        raise ConfigError(f"{run_dir} holds a run made with another config ({_listing(changed)}); use another "
                          "output_dir, or allow_config_change=true to continue it with the new values")
    procs.barrier()
    if procs.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if changed:
            keep = run_dir / f"config.before-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
            saved_path.replace(keep)
            last = latest_checkpoint(run_dir)
            how = f"from {last.name}" if last else "from step 0: it kept no checkpoint (save_every)"
            log.warning("%s: training again with a changed config (%s), %s; the old config is in %s", run_dir,
                        _listing(changed), how, keep.name)
        tmp = saved_path.with_suffix(".yaml.tmp")
        save(cfg, tmp)
        tmp.replace(saved_path)
    procs.barrier()


def changed_keys(cfg, saved_path: Path) -> dict[str, tuple]:
    """{dotted key: (saved value, current value)} for the keys that change what a run computes."""
    try:
        saved = to_dict(from_dict(type(cfg), safe_load(saved_path.read_text(), str(saved_path)) or {},
                                   str(saved_path)))
    except (ConfigError, yaml.YAMLError) as exc:  # written by another mmpo: compare as it stands
        log.warning("%s: %s", saved_path, exc)
        saved = yaml.safe_load(saved_path.read_text()) or {}
    before, now = _flatten(saved), _flatten(to_dict(cfg))
    return {k: (before.get(k), now.get(k)) for k in sorted(before.keys() | now.keys())
            if before.get(k) != now.get(k) and k.split(".")[0] not in RERUN_EXEMPT and k not in RERUN_EXEMPT}


def _listing(changed: dict) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:8])


def finished(run_dir: Path) -> bool:
    """A `train` run is finished once summary.json exists (it is written after the final adapter/model)."""
    return (run_dir / "summary.json").is_file()


def finished_with_this_config(cfg, run_dir: Path) -> bool:
    """The folder holds a finished run of this very config (settings in RERUN_EXEMPT aside): nothing to train."""
    saved = run_dir / "config.yaml"
    return finished(run_dir) and saved.is_file() and not changed_keys(cfg, saved)


def has_results(run_dir: Path) -> bool:
    """A run folder holds work a rerun would continue or replace: a checkpoint or a finished run, in it or in
    a sub-run (a schedule's rounds and stages)."""
    return any(run_dir.glob("**/checkpoints/latest")) or any(run_dir.glob("**/summary.json"))


# Settings that never change what a run computes (display, logging, checkpoint cadence, worker count).
RERUN_EXEMPT = {"progress", "log_every", "save_every", "save_total_limit", "save_on_interrupt", "eval_every",
                "eval_config", "tensorboard", "report_to", "tracker_project", "run_name", "data.num_workers",
                "allow_config_change", "output_dir", "dist_timeout_min"}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) and k != "params" else {key: v})
    return out
