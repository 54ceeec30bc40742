"""Benchmark: answer-token log-probs over a vocabulary, mmpo's chunked kernel vs a plain fp32 log_softmax.

Forward + backward of sum(log p(target)) for [batch, positions, vocab] logits; prints time and the fp32
working set each needs (plain: a full [B, T, V] fp32 log_softmax output kept for backward; chunked: one
[B, chunk, V] fp32 chunk and its softmax at a time in backward). The last line is a JSON object.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/logsoftmax_speed.py --device cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mmpo.logprobs import LOGSOFTMAX_CHUNK, token_logps  # noqa: E402


def plain(logits, targets):
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def best_time(fn, logits, targets, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        x = logits.detach().clone().requires_grad_(True)
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(x, targets).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=8, help="rows (4 pairs x chosen/rejected)")
    p.add_argument("--positions", type=int, default=152, help="answer tokens per row")
    p.add_argument("--vocabs", type=int, nargs="+", default=[350, 32000, 152064])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    print("| vocab | plain ms | chunked ms | chunked / plain | plain fp32 MiB | chunked fp32 MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    out = {}
    for v in args.vocabs:
        logits = torch.randn(args.batch, args.positions, v, device=args.device, dtype=dtype)
        targets = torch.randint(0, v, (args.batch, args.positions), device=args.device)
        t_plain = best_time(plain, logits, targets, args.repeats)
        t_chunk = best_time(token_logps, logits, targets, args.repeats)
        mib_plain = args.batch * args.positions * v * 4 / 2**20
        mib_chunk = 2 * args.batch * min(args.positions, LOGSOFTMAX_CHUNK) * v * 4 / 2**20  # chunk + its softmax
        print(f"| {v} | {t_plain * 1e3:.1f} | {t_chunk * 1e3:.1f} | {t_chunk / t_plain:.2f} | {mib_plain:.0f} "
              f"| {mib_chunk:.0f} |")
        out[v] = {"plain_ms": round(t_plain * 1e3, 2), "chunked_ms": round(t_chunk * 1e3, 2)}
    print(json.dumps({"device": args.device, "dtype": str(dtype), "batch": args.batch, "positions": args.positions,
                      "vocab": out}))


if __name__ == "__main__":
    main()
