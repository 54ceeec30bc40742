"""Writing mmpo pairs in the layouts other trainers read: TRL (parquet, images embedded), LLaMA-Factory
(sharegpt JSON + `dataset_info.json`), ms-swift (JSONL). Media files are copied beside the rows (paths
formats) or embedded (TRL), so the folder written is self-contained; each row keeps the pair's `id`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpo.formats import llamafactory, swift
from mmpo.formats.export_media import MediaCopier
from mmpo.records import to_trl_rows


def write_llamafactory(records, media_root, out: str | Path, name: str = "mmpo_pairs") -> Path:
    """`out/<name>.json` (sharegpt preference rows) + `out/dataset_info.json` with its entry + `out/media/`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    rows = llamafactory.write_rows(records, MediaCopier(out, media_root))
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    info_path = out / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info[name] = llamafactory.info_entry(f"{name}.json", records[0].media_type if records else "image")
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out / f"{name}.json"


def write_swift(records, media_root, out: str | Path, name: str = "mmpo_pairs") -> Path:
    """`out/<name>.jsonl` (ms-swift RLHF rows) + `out/media/`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = swift.write_rows(records, MediaCopier(out, media_root))
    path = out / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_trl(records, media_root, out: str | Path, name: str = "train") -> Path:
    """`out/<name>.parquet` in TRL's conversational vision layout with the image bytes embedded (the Hub's
    `rlaif-v_formatted` schema: `images` a list of {bytes, path}); `datasets.load_dataset("parquet", ...)` and
    `DPOTrainer` read it as is. Video pairs are refused: TRL has no video collator."""
    import datasets

    records = list(records)
    if any(r.media_type != "image" for r in records):
        raise ValueError("TRL's preference layout holds images only; write video pairs as swift or llamafactory")
    rows = to_trl_rows(records, media_root)
    for row, r in zip(rows, records):
        row["images"] = [{"bytes": Path(p).read_bytes(), "path": Path(m).name} for p, m in zip(row["images"], r.media)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows).cast_column("images", datasets.Sequence(datasets.Image()))
    ds.to_parquet(str(out / f"{name}.parquet"))
    return out / f"{name}.parquet"


WRITERS = {"trl": write_trl, "llamafactory": write_llamafactory, "swift": write_swift}
