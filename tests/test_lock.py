"""The lock file agrees with pyproject.toml and with what is installed (reproducible installs)."""

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lock", REPO / "tools" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_lock_agrees_with_pyproject():
    assert lock.disagreements(lock.project_requirements(), lock.read_lock()) == []


def test_the_check_catches_a_missing_and_an_out_of_range_dependency():
    pins = {"torch": Version("2.14.1"), "numpy": Version("1.26.0")}
    problems = lock.disagreements([Requirement("torch>=2.4"), Requirement("numpy>=2"), Requirement("trl>=1.0")], pins)
    assert problems == ["numpy: locked at 1.26.0, outside pyproject's range >=2",
                        "trl: in pyproject.toml but not in requirements.lock"]


def test_lock_lines_must_be_exact_pins(tmp_path):
    bad = tmp_path / "requirements.lock"
    bad.write_text("# header\ntorch==2.14.1\nnumpy>=2\n")
    with pytest.raises(ValueError, match=r"requirements.lock:3: expected name==version"):
        lock.read_lock(bad)


def test_installed_versions_equal_the_lock():
    """The environment the suite runs in is the locked one (make setup reinstalls when the lock changes)."""
    drift = []
    for name, pinned in lock.read_lock().items():
        installed = Version(importlib.metadata.version(name))
        if Version(installed.public) != pinned:  # a local tag (+cpu) aside; pre- and post-releases count
            drift.append(f"{canonicalize_name(name)}: installed {installed}, locked {pinned}")
    assert not drift, drift
