"""What `pip install mmpo` puts into site-packages: one package, `mmpo`, with the data its code reads.

The builders, evaluators and demo were once top-level packages named `data_builders`, `eval` and `demo`,
generic names that collide with other projects' (issue 24). The wheel is built the way pip builds it here
(the locked setuptools, no build isolation) and its file list read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_one_package_and_its_data(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources, not in the user's checkout
    source = tmp_path / "source"
    shutil.copytree(REPO / "mmpo", source / "mmpo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("mmpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mmpo"}
    for needed in ("mmpo/eval/data/chair_coco_words.json",           # CHAIR's word lists
                   "mmpo/models/hub_files/qwen2_5_vl/tokenizer_config.json",  # make-model's real-format files
                   "mmpo/demo/assets/models/clip/open_clip_config.json",      # the demo's shipped CLIP
                   "mmpo/app/cli.py"):
        assert needed in names, needed
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mmpo = mmpo.app.cli:main" in entry
