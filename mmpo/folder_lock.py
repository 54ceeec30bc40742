"""One writer per output folder: an exclusive `fcntl.flock` on `<folder>/.mmpo.lock`.

Two `mmpo train` runs on one output_dir interleave their metrics, checkpoints and config.yaml (bypassing the
changed-config refusal); two builds on one out_dir append to one pairs.jsonl. The second process is refused
instead, naming the one that holds the folder. flock locks end with their process, however it ends (a crash,
SIGKILL), so there is no stale lock to clean up; the file itself stays, holding the last holder's details.

Within one process the lock is re-entrant (a schedule holds its folder while `train` holds a round's; a test
or notebook may train into a folder twice), counted, and released when the last holder lets go.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".mmpo.lock"
_HELD: dict[str, list] = {}  # resolved folder -> [open file, holders in this process]


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock."""


def acquire(folder: str | Path) -> Path:
    """Take the folder's lock for this process (created if needed); FolderInUse if another process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return folder
    path = folder / LOCK_FILE
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _describe(f.read())
        f.close()
        raise FolderInUse(f"{folder} is in use by another mmpo process ({holder}); wait for it to finish, or use "
                          "another output folder (the lock ends with that process)") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "command": _command()}) + "\n")
    f.flush()
    _HELD[key] = [f, 1]
    return folder


def release(folder: str | Path) -> None:
    """Let go of one hold on the folder's lock; the last one unlocks it."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        fcntl.flock(held[0].fileno(), fcntl.LOCK_UN)
        held[0].close()


@contextlib.contextmanager
def locked(folder: str | Path, enabled: bool = True):
    """Hold the folder's lock for the block (`enabled` false: no lock, e.g. on ranks other than the main one)."""
    if not enabled:
        yield
        return
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


def _command() -> str:
    """This process's command line as the user typed it ("mmpo train ...", also for `python -m mmpo`)."""
    argv = list(sys.argv) or ["python"]
    if argv[0].endswith(("mmpo", os.path.join("mmpo", "__main__.py"))):
        argv[0] = "mmpo"
    return " ".join(argv)[:300]


def _describe(text: str) -> str:
    """"pid 123 on host, since 2026-12-06 03:00:00: mmpo train ..." from the lock file's holder line."""
    try:
        info = json.loads(text.strip().splitlines()[-1])
        return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
    except (ValueError, IndexError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def run_folder(folder: str | Path, procs):
    """Hold a training run's folder for the block: the main process locks it, and every rank learns whether it
    could (so no rank is left waiting in a collective for a main process that was refused)."""
    from mmpo.distributed import all_ranks

    error = None
    if procs.is_main:
        try:
            acquire(folder)
        except FolderInUse as exc:
            error = exc
    if not all_ranks(error is None, procs.world, procs.device):
        raise error or FolderInUse(f"{folder} is in use by another mmpo process (the main process names it)")
    try:
        yield
    finally:
        if procs.is_main:
            release(folder)
