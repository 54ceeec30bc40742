"""Drop native libraries a machine does not need from a wheel (and from its RECORD), so the wheels carried to
the GPU machine fit its 64 MiB limit: bitsandbytes 0.50.2 ships one ~21-26 MB library per CUDA version.

Usage:
    python3 benchmarks/slim_wheel.py .whl/bitsandbytes-*.whl --keep cuda130 cpu
    (keeps libbitsandbytes_cuda130.so and libbitsandbytes_cpu.so, drops every other libbitsandbytes_*.so)
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path


def slim(wheel: Path, keep: list[str]) -> tuple[int, int]:
    """Rewrite `wheel` in place without the unwanted `lib*_<variant>.so` files; returns (bytes before, after)."""
    before = wheel.stat().st_size
    native = re.compile(r"lib[a-z_]+?_([a-z0-9]+)\.so$")
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist()
                   if (m := native.search(i.filename)) and m.group(1) not in keep}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):  # pip checks the RECORD against the files
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if line.split(b",")[0].decode() not in dropped)
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--keep", nargs="+", required=True, help="library variants to keep, e.g. cuda130 cpu")
    args = p.parse_args()
    before, after = slim(args.wheel, args.keep)
    print(f"{args.wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
