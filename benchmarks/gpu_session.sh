#!/usr/bin/env bash
# Issue 15's GPU measurements in ONE device call of at most 9 minutes: `bash benchmarks/gpu_session.sh all`.
# Not yet run on a GPU: no GPU has been lent to this task so far (benchmarks/RESULTS.md says which rows are pending).
#
# Parts, most important first, each in its own process under its own `timeout`, so one slow or hanging part cannot
# eat the others' time; all parts share one deadline (TOTAL=540 s from the start, the wheel install included):
#   (wheels)      pip install --target $SITE of the carried .whl/*.whl (no timeout: all else needs it; ~10 s?)
#   prep          versions and where they come from, GPU, disk, `pip check`, imports, a CUDA NF4 round trip  45 s
#   tests         pytest -m gpu tests/test_gpu.py; the log-softmax kernel at 32k / 152k vocab  budget  75 s
#   llava7b       train_vs_trl: LLaVA-1.5-7B shapes, bf16 LoRA r64, TRL vs mmpo (+precomputed
#                 reference), alternating in one process, 2 warm-up + 6 measured steps          budget 160 s
#   llava7b_qlora the same in NF4 4-bit (QLoRA), TRL vs mmpo                                  budget 110 s
#   eval          eval_speed: POPE questions/s, generate vs logits vs logits+prefix reuse,
#                 answer agreement, on the 7B-shaped LLaVA-1.5                                 budget  80 s
#   video7b       train_vs_trl video7b (LLaVA-NeXT-Video-7B shapes, 8 frames): if >= 100 s are left
#   levers        the other mmpo levers flipped (-shared_prefix, -gradient_checkpointing, -chunked_logsoftmax;
#                 +precompute_reference if llava7b had no time for it) and TRL -gradient_checkpointing: the rest
#   qwen7b        (only when named: `bash benchmarks/gpu_session.sh qwen7b`, not in `all`) train_vs_trl qwen7b and
#                 qwen7b_qlora: Qwen2.5-VL-7B-Instruct shapes (M-RoPE, 576 image tokens), bf16 LoRA and QLoRA, TRL vs
#                 mmpo; dry-run stand-in qwen_tiny (the shrunk real-format Qwen2.5-VL)              budget 300 s
# train_vs_trl parts get --budget-s (their timeout less 25 s): they start no variant that would not end in time,
# print a table of the ones that ran, and keep going when one variant fails (an OOM, say). The 7B checkpoint is
# built once (llava7b) and reused by llava7b_qlora and levers (video7b deletes it first only if under 40 GB are free).
# Every part writes everything it prints to $OUT/<part>.log; $OUT/summary.txt holds the environment, one status
# line per part (exit code, seconds, budget) and each part's headline lines. 7 files in all (the device returns 8).
# Each part also runs alone: `bash benchmarks/gpu_session.sh llava7b_qlora` (prep first, then that part).
#
# ---- Once, here (CPU machine, repo root): the wheels the device machine lacks or has in other versions ----
# (device KINDS.md: the image has torch 2.11.0, transformers 5.17.0, accelerate 1.15.0 (= the lock), peft of an
# unknown version, and no bitsandbytes / trl / datasets / dill / multiprocess / av / decord.) decord is not carried:
# mmpo decodes with PyAV where decord does not import. Copy-paste:
#   x="$(git rev-parse --git-common-dir)/info/exclude"; grep -qx /.whl/ "$x" || echo /.whl/ >>"$x"  # (.gitignore
#   has .whl/ too; worktrees share the main repo's exclude). The wheels must never be committed.
#   rm -rf .whl && python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl transformers==5.24.0 bitsandbytes==0.50.2 trl==1.16.0 \
#     datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 peft==0.21.2 av==18.1.0
#   python3 benchmarks/slim_wheel.py .whl/bitsandbytes-*.whl --keep cuda130 cpu          # 41.1 -> 3.4 MiB
#   python3 benchmarks/slim_wheel.py .whl/transformers-*.whl --keep-models auto bloom clip encoder_decoder \
#     llama llava llava_next llava_next_video llava_onevision qwen2 siglip video_llava     # 12.9 -> 2.3 MiB
#   du -cb .whl/* | tail -1; git ls-files -z | xargs -0 du -cb | tail -1   # what travels: both together < 64 MiB
# Measured 2026-11-28: the 8 wheels 44.4 MB (av 35.8 of it) + the tracked files 15.0 MB = 59.4 MB = 56.7 MiB.
# Unslimmed, transformers (13.5 MB) and av would not fit together. The torch there is cu130: keep bitsandbytes'
# cuda130 (and cpu, for the dry run). The model folders kept are the ones every part imported in the dry run below
# (read from sys.modules at exit of each process, transformers 5.24 on torch 2.11); a part that needs another one
# fails with "No module named 'transformers.models.X'": add X to the list.
#
# ---- Then a CPU dry run of this very script (tiny shapes, every part end to end; ~2 min on 2 cores) ----
#   DRY_RUN=1 PY=.venv/bin/python bash benchmarks/gpu_session.sh all      # OUT defaults to /tmp/gpu_dry
# DRY_RUN=1 swaps each GPU configuration for its CPU stand-in (llava7b -> llava15_cpu: tiny widths, LLaVA-1.5's
# 576 image + ~50 prompt + ~150 answer tokens; llava7b_qlora -> qlora_tiny; video7b -> video_tiny; eval ->
# --layout llava15 --tune-steps 0; smaller log-softmax vocabularies), with the same scripts, options and variant
# lists, and triples the budgets (SCALE=3). The gpu-marked tests skip there (no CUDA). It installs no wheels unless
# WHEELS=1. The closer rehearsal: a Python 3.12 with the device image's versions, plus the carried wheels installed
# by the same command as on the GPU (the venv download is ~5 GB of torch and CUDA libraries, ~3 min here):
#   /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/emu312    # any Python 3.12
#   /tmp/emu312/bin/python -m pip install -q torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 \
#     accelerate==1.15.0 huggingface_hub==1.33.0 tokenizers==0.23.2 safetensors==0.8.0 numpy pillow pyyaml tqdm \
#     pandas pyarrow xxhash fsspec regex pytest psutil matplotlib timm
#   DRY_RUN=1 WHEELS=1 PY=/tmp/emu312/bin/python bash benchmarks/gpu_session.sh all
#
# ---- The device call (one; `run` tool) ----
#   command: bash benchmarks/gpu_session.sh all     carry: [".whl"]     timeout_s: 600
# The script ends by printing summary.txt (the reply's output_tail); the logs come back under files_at.
# If one part failed early and the machine is still warm, rerun just that part: `bash benchmarks/gpu_session.sh
# PART` with the same carry (a rerun reuses the 7B checkpoint if the machine kept /dev/shm or /tmp). Then give_back.
set -uo pipefail  # no -e: a failing part must not end the session; each part's exit code goes to the summary
part=${1:?usage: gpu_session.sh all|prep|tests|llava7b|llava7b_qlora|eval|video7b|levers|qwen7b}
dry=${DRY_RUN:-0}
PY=${PY:-python3}
scale=1
if [ "$dry" = 1 ]; then
  out=${OUT:-/tmp/gpu_dry}
  scale=${SCALE:-3}  # CPU stand-ins of tiny widths still run slower on a 2-core machine than the 7B shapes on an H100
  wheels=${WHEELS:-0}
  site=${SITE:-/tmp/gpu_dry_site}
  work=${WORK:-$(mktemp -d /tmp/gpu_dry_work.XXXXXX)}
  dev=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  out=${OUT:-/tmp/gpu_out}
  wheels=${WHEELS:-1}
  site=${SITE:-/tmp/site}
  # the 7B checkpoints (~14 GB each) live in RAM when /dev/shm has room: written and read at memory speed
  shm_gb=$(df -BG --output=avail /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
  if [ "${shm_gb:-0}" -ge 40 ]; then work=${WORK:-/dev/shm/tvt}; else work=${WORK:-/tmp/tvt}; fi
  dev=cuda
fi
total=$((${TOTAL:-540} * scale))
mkdir -p "$out" "$work"
summary=$out/summary.txt
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$wheels" = 1 ] && [ -d .whl ]; then export PYTHONPATH="$PWD:$site:${PYTHONPATH:-}"
else export PYTHONPATH="$PWD:${PYTHONPATH:-}"; fi
end=$((SECONDS + total))

# The GPU configuration of each train_vs_trl part and its CPU stand-in; variant names depend on whether the
# configuration checkpoints by default (7B: on, so its lever is "-gradient_checkpointing"; CPU stand-ins: off).
if [ "$dry" = 1 ]; then
  c_llava=llava15_cpu c_qlora=qlora_tiny c_video=video_tiny c_qwen=(qwen_tiny) gc_flip=+
  steps=(--warmup 1 --steps 1 --no-memory)
  eval_args=(--device cpu --layout llava15 --images 2 --repeats 1 --tune-steps 0)
  lsm_args=(--device cpu --vocabs 350 32000 --positions 16 --repeats 1)
else
  c_llava=llava7b c_qlora=llava7b_qlora c_video=video7b c_qwen=(qwen7b qwen7b_qlora) gc_flip=-
  steps=(--warmup 2 --steps 6)
  eval_args=(--device cuda --size 7b --images 20 --repeats 2)
  lsm_args=(--device cuda)
fi
tvt=("$PY" benchmarks/train_vs_trl.py --device "$dev" --rounds 1 "${steps[@]}" --work "$work")

note() { echo "$*" >>"$summary"; echo "$*" >&2; }

prep() {  # what the machine has: the GPU run's first lines tell what a later failure was about
  date -u; uname -m; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  df -h /tmp /dev/shm "$work" 2>&1; free -g 2>&1 | head -2
  echo "work folder: $work"
  "$PY" - <<'EOF'
import importlib, importlib.metadata as md, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("mmpo", "torch", "torchvision", "transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes",
             "huggingface_hub", "tokenizers", "safetensors", "numpy", "pyarrow", "av", "decord", "pytest"):
    try:
        mod = importlib.import_module(name)
        where = getattr(mod, "__file__", "") or ""
        print(f"{name} {getattr(mod, '__version__', None) or md.version(name)}  {where.rsplit('/', 2)[0]}")
    except md.PackageNotFoundError:
        print(f"{name} (no version)  {where.rsplit('/', 2)[0]}")
    except Exception as exc:  # noqa: BLE001 - a missing package is what this prints
        print(f"{name} NOT IMPORTABLE: {type(exc).__name__}: {exc}")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "")
import mmpo.trainer, mmpo.eval.answering  # noqa: E401,F401 - the library's own imports
print("mmpo imports ok")
if torch.cuda.is_available():  # bitsandbytes' CUDA library loads and quantizes: the QLoRA parts need it
    try:
        import bitsandbytes.functional as F
        w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
        q, state = F.quantize_4bit(w, quant_type="nf4")
        print("bitsandbytes nf4 round trip max error", float((F.dequantize_4bit(q, state) - w).abs().max()))
    except Exception as exc:  # noqa: BLE001
        print(f"bitsandbytes CUDA 4-bit FAILED: {type(exc).__name__}: {exc}")
EOF
  "$PY" -m pip check 2>&1 | head -20 || true
}

run_part() {  # NAME BUDGET MIN CMD...: run CMD under `timeout`, within min(BUDGET, time left); skip if < MIN left
  local name=$1 budget=$(($2 * scale)) min=$(($3 * scale)); shift 3
  local left=$((end - SECONDS)) log=$out/$name.log
  [ "$budget" -gt "$left" ] && budget=$left
  if [ "$budget" -lt "$min" ]; then
    note "$(printf '%-14s SKIPPED: %d s left, needs %d s' "$name" "$left" "$min")"; return
  fi
  echo "[$(date -u +%T)] $name: budget $budget s ..." >&2
  local t0=$SECONDS
  PART_BUDGET=$((budget - 25)) timeout -k 10 "$budget" bash -c "$*" >"$log" 2>&1 </dev/null
  local rc=$? status
  case $rc in 0) status=ok ;; 124|137) status="TIMED OUT" ;; *) status=FAILED ;; esac
  note "$(printf '%-14s %-9s rc=%-3s %4d s of %4d s' "$name" "$status" "$rc" $((SECONDS - t0)) "$budget")"
  # headline lines: JSON results, pytest's closing line, failures and variants not run
  grep -E '^\{"|(passed|failed|error|skipped).* in [0-9.]+s|FAILED|not run \(|Error:|Killed' "$log" | tail -n 8 \
    | cut -c1-1500 | sed 's/^/    /' >>"$summary"
  [ "$rc" = 0 ] || tail -n 3 "$log" | cut -c1-500 | sed 's/^/    | /' >>"$summary"
}

# each part as one shell command string (run_part passes it to `bash -c`); $PART_BUDGET is set by run_part
q() { printf '%q ' "$@"; }
cmd_tests="$(q "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py); $(q "$PY" benchmarks/logsoftmax_speed.py "${lsm_args[@]}")"
cmd_llava="$(q "${tvt[@]}" --configs "$c_llava" --only trl mmpo "mmpo +precompute_reference") --budget-s \$PART_BUDGET"
cmd_qlora="$(q "${tvt[@]}" --configs "$c_qlora" --only trl mmpo) --budget-s \$PART_BUDGET"
cmd_eval="$(q "$PY" benchmarks/eval_speed.py "${eval_args[@]}")"
# below 40 GB free, the LLaVA-1.5 checkpoint makes room for the video one (levers would then rebuild it)
cmd_video="[ \$(df -BG --output=avail $(q "$work") | tail -1 | tr -dc 0-9) -ge 40 ] || rm -rf $(q "$work")/models/llava-7b-*
$(q "${tvt[@]}" --configs "$c_video" --only trl mmpo) --budget-s \$PART_BUDGET"
cmd_qwen="$(q "${tvt[@]}" --configs "${c_qwen[@]}" --only trl mmpo) --budget-s \$PART_BUDGET"
levers_cmd() {  # the levers llava7b did not measure: +precompute_reference too, unless its log has it
  local levers=("mmpo -chunked_logsoftmax" "mmpo -shared_prefix" "mmpo ${gc_flip}gradient_checkpointing"
                "trl ${gc_flip}gradient_checkpointing")
  grep -q 'mmpo +precompute_reference: median step' "$out/llava7b.log" 2>/dev/null \
    || levers=("mmpo +precompute_reference" "${levers[@]}")
  echo "$(q "${tvt[@]}" --configs "$c_llava" --only "${levers[@]}") --budget-s \$PART_BUDGET"
}

: >"$summary"
note "gpu_session.sh $part  $(date -u +%FT%TZ)  DRY_RUN=$dry  commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
if [ "$wheels" = 1 ] && [ -d .whl ]; then  # not under a timeout: every part needs it whole (offline, ~10 s)
  t0=$SECONDS
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
      >"$out/pip.log" 2>&1; then note "wheels         ok        $((SECONDS - t0)) s: $(ls .whl | tr '\n' ' ')"
  else note "wheels         INSTALL FAILED"; sed 's/^/    | /' "$out/pip.log" | tail -n 20 >>"$summary"; fi
  rm -f "$out/pip.log"
fi
export -f prep; export PY wheels site work
run_part prep 45 10 prep
sed 's/^/    /' "$out/prep.log" >>"$summary" && rm -f "$out/prep.log"
case "$part" in
  all)
    run_part tests 75 30 "$cmd_tests"
    run_part llava7b 160 60 "$cmd_llava"
    run_part llava7b_qlora 110 50 "$cmd_qlora"
    run_part eval 80 40 "$cmd_eval"
    run_part video7b 150 100 "$cmd_video"
    run_part levers 150 50 "$(levers_cmd)" ;;
  prep) ;;
  tests) run_part tests 75 30 "$cmd_tests" ;;
  llava7b) run_part llava7b 300 60 "$cmd_llava" ;;
  llava7b_qlora) run_part llava7b_qlora 300 50 "$cmd_qlora" ;;
  eval) run_part eval 300 40 "$cmd_eval" ;;
  video7b) run_part video7b 500 100 "$cmd_video" ;;
  levers) run_part levers 500 50 "$(levers_cmd)" ;;
  qwen7b) run_part qwen7b 300 100 "$cmd_qwen" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
note "total $SECONDS s (deadline $total s)"
[ "$dry" = 1 ] && [ -z "${WORK:-}" ] && rm -rf "$work"
cat "$summary"
