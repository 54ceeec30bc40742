"""Drop files a machine does not need from a wheel (and from its RECORD), so the wheels carried to the GPU
machine fit its 64 MiB limit: bitsandbytes 0.50.2 ships one ~4-26 MB native library per CUDA / ROCm version,
and transformers 5.24 ships ~450 model folders (10 of its 12.4 MiB) where the benchmarks use a handful.

Usage:
    python3 benchmarks/slim_wheel.py .whl/bitsandbytes-*.whl --keep cuda130 cpu
    (keeps libbitsandbytes_cuda130.so and libbitsandbytes_cpu.so, drops every other libbitsandbytes_*.so)
    python3 benchmarks/slim_wheel.py .whl/transformers-*.whl --keep-models auto llava llama clip
    (keeps transformers/models/{auto,llava,llama,clip}/, drops every other model folder; transformers finds its
    model folders by listing the directory, so the dropped ones are simply absent, and importing one fails)
"""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path


def dropped_files(names: list[str], keep: list[str] | None = None, keep_models: list[str] | None = None) -> set[str]:
    """The wheel members to drop: `lib*_<variant>.so` not in `keep`, `<pkg>/models/<name>/...` not in `keep_models`."""
    native = re.compile(r"lib[a-z_]+?_([a-z0-9]+)\.so$")
    out = set()
    for name in names:
        parts = name.split("/")
        if keep is not None and (m := native.search(name)) and m.group(1) not in keep:
            out.add(name)
        elif keep_models is not None and len(parts) > 3 and parts[1] == "models" and parts[2] not in keep_models:
            out.add(name)
    return out


def slim(wheel: Path, keep: list[str] | None = None, keep_models: list[str] | None = None) -> tuple[int, int]:
    """Rewrite `wheel` in place without the files `dropped_files` names; returns (bytes before, after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = dropped_files(src.namelist(), keep, keep_models)
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
    p.add_argument("--keep", nargs="+", default=None, help="native library variants to keep, e.g. cuda130 cpu")
    p.add_argument("--keep-models", nargs="+", default=None, help="model folders to keep, e.g. auto llava llama")
    args = p.parse_args()
    if args.keep is None and args.keep_models is None:
        p.error("give --keep and/or --keep-models")
    before, after = slim(args.wheel, args.keep, args.keep_models)
    print(f"{args.wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
