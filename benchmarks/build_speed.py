"""Builder throughput: augment (decode + augment + CLIP prefilter) vs bare decord decoding, and self_qa answers/s.

Writes its own H.264 test clips into a temp dir, so it needs no data:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/build_speed.py --device cpu --clips 24

Prints a markdown table, then one JSON line of headline figures (the last line of output).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test-clip writer


def write_clips(root: Path, n: int, size: int, frames: int) -> Path:
    """n clips of moving squares, plus the SFT file that points at them."""
    from videos import make_frames, write_clip

    from mmpo.records import SFTRecord, write_jsonl

    (root / "v").mkdir(parents=True, exist_ok=True)
    recs = []
    for i in range(n):
        write_clip(root / "v" / f"{i}.mp4", make_frames(T=frames, H=size, W=size, seed=i), crf=23)
        recs.append(SFTRecord(f"c{i}", (f"v/{i}.mp4",), "video", "describe the video .", "a square moves right"))
    write_jsonl(root / "sft.jsonl", recs)
    return root / "sft.jsonl"


def bare_decode(root: Path, n: int, num_frames: int) -> float:
    """Seconds to decode every clip with `mmpo.media.load_video` (decord, one thread)."""
    from mmpo.media import load_video

    t = time.perf_counter()
    for i in range(n):
        load_video(root / "v" / f"{i}.mp4", num_frames)
    return time.perf_counter() - t


def augment_time(sft: Path, out: Path, clip: str, device: str, num_frames: int, workers: int) -> float:
    from mmpo.builders.augment import AugmentConfig, build

    cfg = AugmentConfig(in_sft=str(sft), out_dir=str(out), clip_model=clip, clip_device=device, num_frames=num_frames,
                        num_workers=workers, progress=False, fresh=True, max_similarity=0.99999)
    t = time.perf_counter()
    build(cfg)
    return time.perf_counter() - t


def self_qa_rate(sft: Path, out: Path, model_dir: Path, device: str, n_items: int) -> tuple[float, int]:
    """Answers per second of the v1 preset with a tiny model as generator and judge."""
    from mmpo.builders.self_qa import SelfQAConfig, build
    from mmpo.config import ModelConfig
    from mmpo.records import read_sft, write_jsonl

    sub = out.parent / "sft_small.jsonl"
    write_jsonl(sub, read_sft(sft)[:n_items])
    cfg = SelfQAConfig(in_sft=str(sub), media_root=str(sft.parent), out_dir=str(out), progress=False, fresh=True,
                       model=ModelConfig(path=str(model_dir), device=device, num_frames=4), max_new_tokens=16,
                       judge_max_new_tokens=16, questions_per_item=2)
    from mmpo.models import load_model

    load_model(cfg.model)  # warm the imports and the file cache: time the building, not the first load
    t = time.perf_counter()
    build(cfg)
    dt = time.perf_counter() - t
    answers = json.loads((out / "manifest.json").read_text())["counts"]["answers"]
    return answers / dt, answers


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--size", type=int, default=224, help="clip width and height in pixels")
    ap.add_argument("--frames", type=int, default=32, help="frames per written clip")
    ap.add_argument("--num-frames", type=int, default=8, help="frames sampled per clip")
    ap.add_argument("--workers", type=int, default=0, help="augment decode/augment processes")
    ap.add_argument("--qa-items", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from mmpo.clip import make_tiny_clip
    from mmpo.models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sft = write_clips(root, args.clips, args.size, args.frames)
        clip = str(make_tiny_clip(root / "clip", image_size=64))
        bare_decode(root, 2, args.num_frames)  # warm decord import and the page cache
        t_dec = bare_decode(root, args.clips, args.num_frames)
        t_aug_nf = augment_time(sft, root / "a0", "", args.device, args.num_frames, args.workers)
        t_aug = augment_time(sft, root / "a1", clip, args.device, args.num_frames, args.workers)
        model = make_tiny_model("llava_next_video", root / "m")
        qa_rate, n_answers = self_qa_rate(sft, root / "qa", model, args.device, args.qa_items)

    n = args.clips
    rows = [("bare decord decode", n / t_dec), ("augment, no prefilter (decode + specs)", n / t_aug_nf),
            ("augment + tiny-CLIP prefilter (decode + 4 augs + CLIP)", n / t_aug)]
    print(f"\n{n} clips {args.size}x{args.size}, {args.frames} frames written, {args.num_frames} sampled; "
          f"device {args.device}, workers {args.workers}\n")
    print("| stage | clips/s |\n|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    print(f"| self_qa v1, tiny llava_next_video generate + judge ({n_answers} answers) | {qa_rate:.2f} answers/s |")
    head = {"device": args.device, "clips": n, "size": args.size, "decode_clips_per_s": round(n / t_dec, 2),
            "augment_noclip_clips_per_s": round(n / t_aug_nf, 2), "augment_clip_clips_per_s": round(n / t_aug, 2),
            "self_qa_answers_per_s": round(qa_rate, 2)}
    print(json.dumps(head))
    return head


if __name__ == "__main__":
    main()
