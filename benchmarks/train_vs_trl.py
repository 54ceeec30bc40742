"""mmpo's trainer vs TRL's DPOTrainer: same model, pairs, batch, LoRA targets, precision and lengths.

Both tools train in ONE process, alternating in rounds (mmpo variants, then TRL, then again), each run
starting from the same checkpoint and a fresh LoRA adapter; the first `--warmup` steps of every run are
dropped and the median of the remaining step times is reported (pairs/s = pairs per step / step time).

- mmpo steps are timed by its own MetricLogger (`log_every=1`: one metrics row per optimizer step,
  timed flush-to-flush, so data collation, forward, backward and the optimizer are all inside).
- TRL steps are timed on_step_end -> on_step_end by a TrainerCallback (also including data loading).
- tokens/s uses one definition for both: the tokens of the plain layout, 2 x (media + prompt) +
  chosen + rejected per pair.
- Peak memory: CUDA max_memory_allocated per run; on CPU, what a child process that runs that variant alone
  adds to its peak RSS above the same imports and set-up (ru_maxrss is a process-wide high-water mark, useless
  within one process, and its absolute value is dominated by the ~1 GiB of imported libraries, which made
  every variant print the same number before 2026-11-28).

mmpo lever variants (each flips one setting of the baseline): shared-prefix forward, precomputed
reference log-probs, gradient checkpointing, chunked log-softmax (off = one fp32 log_softmax over the
full [B, T, V] logits, as a plain trainer would).

Configurations: `tiny` (CPU, tiny LLaVA with 64 image tokens), `llava15_cpu` (CPU, tiny widths in
LLaVA-1.5's sequence layout: 576 image tokens, ~50 prompt and ~150 answer tokens), and for a GPU `llava7b` (LLaVA-1.5-7B
shapes, random init, bf16 LoRA r=64 on all language-model linears, gradient checkpointing, 576 image
tokens, ~50 prompt / ~150 answer tokens), `llava7b_qlora` (the same in NF4 4-bit) and `video7b`
(LLaVA-NeXT-Video-7B shapes, 8 frames). Weights are created on the GPU by `build_model`, saved once to a
work folder and loaded by both tools from there.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/train_vs_trl.py --device cpu
    python benchmarks/train_vs_trl.py --device cuda --configs llava7b llava7b_qlora video7b

The last output line is a JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from flops import dpo_step_useful_flops, measured_peak_flops  # noqa: E402

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

CONFIGS = {
    "tiny": dict(family="llava", size="tiny", image_size=32, patch=4, frames=1, prompt_words=(8, 14),
                 answer_words=(10, 30), pairs=64, batch=4, lora_r=8, precision="fp32", qlora=False, gc=False),
    # tiny widths, LLaVA-1.5's sequence layout: 576 image tokens (336 px, patch 14), ~50 prompt, ~150 answer
    "llava15_cpu": dict(family="llava", size="tiny", image_size=336, patch=14, frames=1, prompt_words=(35, 45),
                        answer_words=(130, 170), pairs=32, batch=4, lora_r=8, precision="fp32", qlora=False,
                        gc=False),
    # CPU smoke runs of the GPU configurations' code paths (video collator, 4-bit loading); not speed claims
    "video_tiny": dict(family="llava_next_video", size="tiny", image_size=32, patch=4, frames=4, prompt_words=(8, 14),
                       answer_words=(10, 30), pairs=16, batch=2, lora_r=8, precision="fp32", qlora=False, gc=False),
    "qlora_tiny": dict(family="llava", size="tiny", image_size=32, patch=4, frames=1, prompt_words=(8, 14),
                       answer_words=(10, 30), pairs=16, batch=4, lora_r=8, precision="fp32", qlora=True, gc=False),
    "llava7b": dict(family="llava", size="7b", frames=1, prompt_words=(35, 45), answer_words=(130, 170),
                    pairs=64, batch=4, lora_r=64, precision="bf16", qlora=False, gc=True),
    "llava7b_qlora": dict(family="llava", size="7b", frames=1, prompt_words=(35, 45), answer_words=(130, 170),
                          pairs=64, batch=4, lora_r=64, precision="bf16", qlora=True, gc=True),
    "video7b": dict(family="llava_next_video", size="7b", frames=8, prompt_words=(35, 45), answer_words=(130, 170),
                    pairs=32, batch=2, lora_r=64, precision="bf16", qlora=False, gc=True),
    # Qwen2.5-VL-7B-Instruct shapes (mmpo make-model --family qwen2_5_vl --size 7b: the real tokenizer and
    # processor), M-RoPE; 672 x 672 px images = 24 x 24 merged patches = 576 image tokens, LLaVA-1.5's count
    "qwen7b": dict(family="qwen2_5_vl", size="7b", frames=1, side=672, prompt_words=(35, 45),
                   answer_words=(130, 170), pairs=64, batch=4, lora_r=64, precision="bf16", qlora=False, gc=True),
    "qwen7b_qlora": dict(family="qwen2_5_vl", size="7b", frames=1, side=672, prompt_words=(35, 45),
                         answer_words=(130, 170), pairs=64, batch=4, lora_r=64, precision="bf16", qlora=True, gc=True),
    # their CPU stand-in for the dry run: the shrunk real-format Qwen2.5-VL (16 image tokens at 112 px)
    "qwen_tiny": dict(family="qwen2_5_vl", size="tiny", image_size=112, patch=14, frames=1, side=112,
                      prompt_words=(8, 14), answer_words=(10, 30), pairs=16, batch=4, lora_r=8, precision="fp32",
                      qlora=False, gc=False),
}
LEVERS = ("shared_prefix", "precompute_reference", "gradient_checkpointing", "chunked_logsoftmax")


# ----------------------------------------------------------------------------- model and data

def make_checkpoint(spec: dict, models: Path, device: str) -> Path:
    """A checkpoint folder with weights: tiny from the factory (more image tokens), 7B built on the GPU.

    Kept under `models/`, named by what shapes the weights, so configurations that differ only in how they
    train (llava7b and llava7b_qlora; tiny and qlora_tiny) share one checkpoint: at 7B that saves building and
    writing another ~14 GB.
    """
    from mmpo.models import build_model, make_tiny_model

    shape = f"{spec['image_size']}px-p{spec['patch']}" if spec["size"] == "tiny" else "default"
    out = models / f"{spec['family']}-{spec['size']}-{shape}-{spec['frames']}f"
    if (out / "done").exists():
        return out
    if spec["size"] == "tiny":
        # a smaller patch than the factory's default gives a realistic media:answer token ratio
        make_tiny_model(spec["family"], out, image_size=spec["image_size"], patch_size=spec["patch"])
    else:
        make_tiny_model(spec["family"], out, size="7b", num_frames=spec["frames"])
        torch.manual_seed(0)
        model = build_model(out, device=device, dtype=torch.bfloat16)
        model.save_pretrained(out)  # ~14 GB; both tools then load the same weights from disk
        del model
        torch.cuda.empty_cache()
    (out / "done").write_text("ok")
    return out


def _words(processor) -> list[str]:
    vocab = processor.tokenizer.get_vocab()
    return sorted(w for w in vocab if w.isalpha() and w.islower() and len(w) > 1)


def _write_clip(path: Path, frames) -> None:
    import av

    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=8)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)


def make_pairs(spec: dict, processor, work: Path, side: int) -> Path:
    """`pairs` random-word pairs (same for both tools) with random images or clips; returns the JSONL."""
    import numpy as np
    from PIL import Image

    path = work / "pairs.jsonl"
    if path.exists():
        return path
    rng, words = random.Random(0), _words(processor)
    video = spec["family"] in ("llava_next_video",)
    (work / "media").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(spec["pairs"]):
        arr = np.random.default_rng(i).integers(0, 255, (spec["frames"] if video else 1, side, max(side, 64), 3),
                                                dtype=np.uint8)
        rel = f"media/{i}.{'mp4' if video else 'png'}"
        _write_clip(work / rel, arr) if video else Image.fromarray(arr[0]).save(work / rel)
        say = lambda lo_hi: " ".join(rng.choice(words) for _ in range(rng.randint(*lo_hi)))  # noqa: E731
        lines.append({"id": f"p{i}", "media": [rel], "media_type": "video" if video else "image",
                      "prompt": say(spec["prompt_words"]), "chosen": say(spec["answer_words"]),
                      "rejected": say(spec["answer_words"])})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def trl_rows(pairs: Path, processor, media_type: str) -> list[dict]:
    """TRL rows with token sequences identical to mmpo's (BOS and chat template in the prompt text).

    Not `mmpo.records.to_trl_rows`: its conversational rows let TRL apply the chat template, and TRL then adds no
    BOS, so the two tools would train on different token sequences; video clips are loaded here as paths for
    `_video_collator`, images as PIL images up front (no per-step decoding in TRL's timings).
    """
    from PIL import Image

    from mmpo.models import prompt_text

    bos, eos = processor.tokenizer.bos_token or "", processor.tokenizer.eos_token  # Qwen adds no BOS
    rows = []
    for line in pairs.read_text().splitlines():
        r = json.loads(line)
        media = (Image.open(pairs.parent / r["media"][0]).convert("RGB") if media_type == "image"
                 else str(pairs.parent / r["media"][0]))
        rows.append({"images": [media], "prompt": bos + prompt_text(processor, r["prompt"], media_type),
                     "chosen": r["chosen"] + eos, "rejected": r["rejected"] + eos})
    return rows


def layout_stats(pairs: Path, processor, media_type: str, frames: int) -> dict:
    """Mean token counts per pair (media, text prompt, chosen, rejected) as mmpo's collator encodes them."""
    from mmpo.batches import PairCollator, read_records

    records, _ = read_records(pairs, pairs.parent, "pair", "error")
    collate = PairCollator(processor, str(pairs.parent), num_frames=frames, max_length=10**6)
    media_id = processor.tokenizer.convert_tokens_to_ids(getattr(processor, f"{media_type}_token", f"<{media_type}>"))
    sums = dict(media=0, prompt=0, chosen=0, rejected=0)
    for i in range(0, len(records), 8):
        b = collate(records[i:i + 8])
        ids, mask = b.prompt["input_ids"], b.prompt["attention_mask"]
        n_media = int(((ids == media_id) & mask.bool()).sum())
        sums["media"] += n_media
        sums["prompt"] += int(mask.sum()) - n_media
        sums["chosen"] += int(b.chosen["attention_mask"].sum())
        sums["rejected"] += int(b.rejected["attention_mask"].sum())
    out = {k: v / len(records) for k, v in sums.items()}
    out["plain_tokens_per_pair"] = 2 * (out["media"] + out["prompt"]) + out["chosen"] + out["rejected"]
    return out


# ----------------------------------------------------------------------------- the two trainers

def _full_token_logps(logits, targets, chunk=None):
    """The lever's "off" state: one fp32 log_softmax over all answer logits (a full fp32 copy)."""
    return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@contextlib.contextmanager
def logsoftmax_mode(chunked: bool):
    import mmpo.logprobs as lp

    original = lp.token_logps
    if not chunked:
        lp.token_logps = _full_token_logps
    try:
        yield
    finally:
        lp.token_logps = original


def run_mmpo(env: dict, variant: dict, steps: int, out: Path) -> list[float]:
    """Train `steps` optimizer steps with mmpo; returns the per-step seconds from metrics.jsonl.

    The reference pre-pass (precompute_reference) runs before step 1, so it is not in the step times; its
    seconds are left in `env["last_prepass_s"]` and reported separately.
    """
    from mmpo.config import TrainConfig, load
    from mmpo.metrics import read_metrics
    from mmpo.trainer import train

    spec = env["spec"]
    cfg = load(TrainConfig, None, [
        f"model.path={env['model']}", f"model.device={env['device']}",
        f"model.dtype={'bfloat16' if spec['precision'] == 'bf16' else 'float32'}",
        f"model.load_in_4bit={str(spec['qlora']).lower()}", f"model.num_frames={spec['frames']}",
        f"lora.r={spec['lora_r']}", f"lora.alpha={2 * spec['lora_r']}", f"lora.target_modules={LORA_TARGETS}",
        f"data.train={env['pairs']}", "data.max_length=100000", f"output_dir={out}",
        f"batch_size={spec['batch']}", f"max_steps={steps}", "lr=1e-4", "warmup_ratio=0", "log_every=1",
        "progress=false", f"precision={spec['precision']}", "loss=[{name: dpo, params: {beta: 0.1}}]",
        *(f"{k}={str(variant[k]).lower()}" for k in LEVERS if k != "chunked_logsoftmax")])
    shutil.rmtree(str(env["pairs"]) + ".refcache", ignore_errors=True)  # every run pays its own pre-pass
    shutil.rmtree(out, ignore_errors=True)  # a fresh run folder (mmpo refuses to continue one with another config)
    with logsoftmax_mode(variant["chunked_logsoftmax"]):
        run_dir = train(cfg)
    env["last_prepass_s"] = json.loads((run_dir / "summary.json").read_text())["reference_prepass_s"]
    return [spec["batch"] / row["pairs_per_s"] for row in read_metrics(run_dir)]


def _trl_model(env: dict):
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    spec = env["spec"]
    kwargs = dict(dtype=torch.bfloat16 if spec["precision"] == "bf16" else torch.float32)
    if spec["qlora"]:
        from mmpo.models.families import spec as family_spec

        family = family_spec(spec["family"])
        skip = [*family.vision_modules, family.projector, "lm_head"]
        kwargs.update(device_map={"": env["device"]}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"], llm_int8_skip_modules=skip))  # = mmpo's: bf16 on GPU, fp32 CPU
    model = AutoModelForImageTextToText.from_pretrained(env["model"], **kwargs)
    return model if spec["qlora"] else model.to(env["device"])


def _video_collator(processor, frames: int):
    """TRL's vision collator handles images only: the docs/ENVIRONMENT.md §3 video collator."""
    from trl.trainer.utils import flush_left, pad

    from mmpo.media import load_media

    def collate(ex):
        clips = [load_media("/", e["images"][0], "video", frames) for e in ex]
        p = processor(text=[e["prompt"] for e in ex] * 2, videos=clips * 2, padding=True, padding_side="left",
                      return_tensors="pt", add_special_tokens=False)
        tok = processor.tokenizer
        c = tok([e["chosen"] for e in ex], padding=True, padding_side="right", return_tensors="pt",
                add_special_tokens=False)
        r = tok([e["rejected"] for e in ex], padding=True, padding_side="right", return_tensors="pt",
                add_special_tokens=False)
        ids = torch.cat(tuple(pad([c["input_ids"], r["input_ids"]], padding_value=tok.pad_token_id)))
        m = torch.cat(tuple(pad([c["attention_mask"], r["attention_mask"]], padding_value=0)))
        attn, input_ids, cm = flush_left(torch.cat((p["attention_mask"], m), 1), torch.cat((p["input_ids"], ids), 1),
                                         torch.cat((torch.zeros_like(p["attention_mask"]), m), 1))
        return {"input_ids": input_ids, "attention_mask": attn, "completion_mask": cm,
                "pixel_values_videos": p["pixel_values_videos"]}
    return collate


def run_trl(env: dict, variant: dict, steps: int, out: Path) -> list[float]:
    """Train `steps` steps with TRL's DPOTrainer (LoRA, reference = adapter disabled); per-step seconds."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    spec = env["spec"]
    marks: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            if env["device"].startswith("cuda"):
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    gc_on = variant["gradient_checkpointing"]
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=spec["batch"], max_steps=steps,
                     learning_rate=1e-4, beta=0.1, max_length=None, use_cpu=env["device"] == "cpu",
                     bf16=spec["precision"] == "bf16", activation_checkpointing=gc_on,
                     activation_checkpointing_kwargs={"use_reentrant": False} if gc_on else None,
                     report_to="none", save_strategy="no", logging_steps=10, disable_tqdm=True, seed=0,
                     lr_scheduler_type="constant")
    peft_cfg = LoraConfig(r=spec["lora_r"], lora_alpha=2 * spec["lora_r"], lora_dropout=0.0,
                          target_modules=LORA_TARGETS)
    video = env["media_type"] == "video"
    trainer = DPOTrainer(model=_trl_model(env), args=args, train_dataset=Dataset.from_list(env["trl_rows"]),
                         processing_class=env["processor"], peft_config=peft_cfg,
                         data_collator=_video_collator(env["processor"], spec["frames"]) if video else None)
    trainer.add_callback(StepTimer())
    trainer.train()
    return [b - a for a, b in zip(marks, marks[1:])]


# ----------------------------------------------------------------------------- measuring

def variants_for(spec: dict) -> dict[str, dict]:
    """TRL and mmpo at the baseline settings, then mmpo with each lever flipped (and TRL's ckpt flipped)."""
    base = dict(shared_prefix=True, precompute_reference=False, gradient_checkpointing=spec["gc"],
                chunked_logsoftmax=True)
    out = {"trl": dict(base, tool="trl"), "mmpo": dict(base, tool="mmpo")}
    for lever in LEVERS:
        out[f"mmpo {'-' if base[lever] else '+'}{lever}"] = dict(base, tool="mmpo", **{lever: not base[lever]})
    flipped = f"trl {'-' if spec['gc'] else '+'}gradient_checkpointing"
    out[flipped] = dict(base, tool="trl", gradient_checkpointing=not spec["gc"])
    return out


def measure_once(env: dict, variant: dict, steps: int, out: Path) -> tuple[list[float], float | None]:
    """One run of one variant: (per-step seconds, peak CUDA GiB or None on CPU)."""
    cuda = env["device"].startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    env["last_prepass_s"] = 0.0
    times = (run_mmpo if variant["tool"] == "mmpo" else run_trl)(env, variant, steps, out)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    gc.collect()
    return times, peak


def child_rss(args, config: str, name: str) -> float:
    """Peak RSS (GiB) of a fresh process that runs only this variant (CPU memory figure)."""
    cmd = [sys.executable, __file__, "--device", args.device, "--configs", config, "--work", str(args.work),
           "--child", name, "--steps", str(args.warmup + 3)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_gib"]
    except (IndexError, KeyError, json.JSONDecodeError):
        print(res.stderr[-2000:], file=sys.stderr)
        return float("nan")


def setup(config: str, args) -> dict:
    from transformers import AutoConfig, AutoProcessor

    spec = CONFIGS[config]
    work = Path(args.work) / config
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_checkpoint(spec, Path(args.work) / "models", args.device)
    processor = AutoProcessor.from_pretrained(model_dir)
    mcfg = AutoConfig.from_pretrained(model_dir)
    media_type = "video" if spec["family"] == "llava_next_video" else "image"
    pairs = make_pairs(spec, processor, work, spec.get("side") or mcfg.vision_config.image_size)
    return dict(spec=spec, work=work, model=str(model_dir), processor=processor, model_cfg=mcfg, pairs=str(pairs),
                device=args.device, media_type=media_type, trl_rows=trl_rows(pairs, processor, media_type),
                stats=layout_stats(pairs, processor, media_type, spec["frames"]))


def bench_config(config: str, args) -> dict:
    env = setup(config, args)
    spec, stats = env["spec"], env["stats"]
    variants = variants_for(spec)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    times = {name: [] for name in variants}
    peaks = {name: [] for name in variants}
    prepass = {name: [] for name in variants}
    failed, skipped, longest = {}, [], 0.0
    for rnd in range(args.rounds):
        for name, variant in variants.items():  # alternating: every round runs every variant once
            if name in failed:
                continue
            # --budget-s: start a run only if one as long as the longest so far still ends in time
            if args.deadline is not None and time.monotonic() + longest > args.deadline:
                skipped.append(f"round {rnd} {name}")
                continue
            began = time.monotonic()
            try:
                t, p = measure_once(env, variant, args.warmup + args.steps,
                                    env["work"] / f"run-{rnd}-{name.replace(' ', '_')}")
            except Exception as exc:  # one variant's crash (an OOM, say) must not lose the others' numbers
                traceback.print_exc()
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                print(f"[{config}] round {rnd} {name}: FAILED {failed[name]}", flush=True)
                gc.collect()
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            longest = max(longest, time.monotonic() - began)
            times[name] += t[args.warmup:]
            peaks[name] += [p] if p is not None else []
            prepass[name].append(env["last_prepass_s"])
            mem = "" if p is None else f", peak {p:.2f} GiB"
            print(f"[{config}] round {rnd} {name}: median step {statistics.median(t[args.warmup:]) * 1e3:.1f} ms"
                  f" ({spec['batch'] / statistics.median(t[args.warmup:]):.2f} pairs/s{mem}; run "
                  f"{time.monotonic() - began:.0f} s)", flush=True)
    if skipped:
        print(f"[{config}] not run (--budget-s {args.budget_s:g}): {', '.join(skipped)}", flush=True)
    peak_flops = measured_peak_flops(args.device)
    rows = {}
    for name, variant in variants.items():
        if not times[name]:
            continue
        step = statistics.median(times[name])
        useful = dpo_step_useful_flops(env["model_cfg"], spec["batch"], stats["media"], stats["prompt"],
                                       stats["chosen"], stats["rejected"], spec["frames"], reference=True)["total"]
        pre = statistics.median(prepass[name])
        # one epoch of the whole pair set, the reference pre-pass included: what a single-epoch run sees
        epoch = spec["pairs"] / (spec["pairs"] * step / spec["batch"] + pre)
        rows[name] = dict(step_ms=step * 1e3, pairs_per_s=spec["batch"] / step, prepass_s=pre, epoch_pairs_per_s=epoch,
                          tokens_per_s=spec["batch"] * stats["plain_tokens_per_pair"] / step,
                          step_ms_iqr=_iqr(times[name]), n_steps=len(times[name]),
                          peak_gib=max(peaks[name]) if peaks[name] else
                          (child_rss(args, config, name) if args.memory else None),
                          useful_tflops=useful / step / 1e12, utilisation=useful / step / peak_flops)
    return dict(config=config, stats=stats, peak_tflops=peak_flops / 1e12, rows=rows, failed=failed, skipped=skipped,
                ratio=rows["mmpo"]["pairs_per_s"] / rows["trl"]["pairs_per_s"] if "trl" in rows and "mmpo" in rows else None)


def _iqr(xs: list[float]) -> float:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return (q[2] - q[0]) * 1e3


def print_table(res: dict) -> None:
    print(f"\n## {res['config']}  (tokens per pair: {json.dumps({k: round(v, 1) for k, v in res['stats'].items()})}; "
          f"measured peak {res['peak_tflops']:.3f} TFLOP/s)")
    print("| variant | step ms (IQR) | pairs/s | pre-pass s | 1-epoch pairs/s | tokens/s "
          "| peak mem GiB (CPU: added by training) | useful TFLOP/s | utilisation | vs TRL | 1 epoch vs TRL |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    trl = res["rows"].get("trl", {}).get("pairs_per_s")
    for name, r in res["rows"].items():
        mem = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.3f}"
        ratio = f"{r['pairs_per_s'] / trl:.2f}x" if trl else "-"
        epoch_ratio = f"{r['epoch_pairs_per_s'] / res['rows']['trl']['epoch_pairs_per_s']:.2f}x" if trl else "-"
        print(f"| {name} | {r['step_ms']:.1f} ({r['step_ms_iqr']:.1f}) | {r['pairs_per_s']:.1f} | {r['prepass_s']:.1f} "
              f"| {r['epoch_pairs_per_s']:.1f} | {r['tokens_per_s']:.0f} | {mem} | {r['useful_tflops']:.4f} "
              f"| {r['utilisation']:.1%} | {ratio} | {epoch_ratio} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--configs", nargs="+", default=None, help=f"of {list(CONFIGS)}; default by device")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per run (after warm-up)")
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default all)")
    parser.add_argument("--work", default=None, help="work folder (models, pairs, runs); default a temp dir")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip CPU child-process RSS")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no run that would end past this many seconds after start (a run is assumed to "
                             "take as long as the longest so far); the variants not run are listed")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")) if args.device == "cpu" else torch.get_num_threads())
    args.work = Path(args.work or tempfile.mkdtemp(prefix="train_vs_trl-"))
    configs = args.configs or (["tiny"] if args.device == "cpu" else ["llava7b", "llava7b_qlora", "video7b"])
    if args.child:  # one variant alone in this process: report its peak RSS
        env = setup(configs[0], args)
        import trl  # noqa: F401  (both tools pay the same import baseline)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # imports, model, data: set-up
        measure_once(env, variants_for(env["spec"])[args.child], args.steps, env["work"] / "child")
        # ru_maxrss is a high-water mark: what training adds above set-up is the variant's own working memory
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps({"peak_rss_gib": peak - baseline, "setup_rss_gib": baseline}))
        return
    results = []
    for config in configs:
        res = bench_config(config, args)
        print_table(res)
        results.append(res)
    headline = {"device": args.device, "torch": torch.__version__}
    for res in results:
        rows = res["rows"]
        headline[res["config"]] = {name: {"pairs_per_s": round(r["pairs_per_s"], 2),
                                          "epoch_pairs_per_s": round(r["epoch_pairs_per_s"], 2),
                                          "peak_gib": None if r["peak_gib"] is None else round(r["peak_gib"], 3),
                                          "utilisation": round(r["utilisation"], 4)} for name, r in rows.items()}
        headline[res["config"]]["mmpo_vs_trl"] = None if res["ratio"] is None else round(res["ratio"], 2)
        if res["failed"]:
            headline[res["config"]]["failed"] = res["failed"]
        if res["skipped"]:
            headline[res["config"]]["not_run"] = res["skipped"]
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
