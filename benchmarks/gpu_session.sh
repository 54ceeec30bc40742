#!/usr/bin/env bash
# Issue 9's GPU measurements, one part per device call (each part fits the 10-minute command limit).
# Not yet run: no GPU has been lent to this task so far (benchmarks/RESULTS.md says which rows are pending).
#
# Once, here (CPU machine, repo root), fetch the wheels the device machine lacks or has in other versions
# (device KINDS.md, 2026-11: transformers 5.17, no bitsandbytes/trl/datasets/dill/multiprocess/av/decord):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     transformers==5.23.0 bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   python3 benchmarks/slim_wheel.py .whl/bitsandbytes-*.whl --keep cuda130 cuda132 cpu   # 41 -> ~7 MiB
#   Measured 2026-11-23: the six wheels are 58 MB (bitsandbytes 43 MB of one library per CUDA version), and the repo
#   ~12 MB, over the 64 MiB the device takes; slimmed, ~34 MB in all. video7b also needs av and decord: add
#   them for that call only.
# Then one device call per part, with carry [".whl"]:
#   bash benchmarks/gpu_session.sh tests      # pytest -m gpu + the log-softmax kernel at 32k / 152k vocab
#   bash benchmarks/gpu_session.sh llava7b    # train_vs_trl, bf16 LoRA (one round of every variant)
#   bash benchmarks/gpu_session.sh llava7b_qlora
#   bash benchmarks/gpu_session.sh video7b
#   bash benchmarks/gpu_session.sh eval       # eval_speed on the 7B-shaped LLaVA-1.5
# Each part writes its log to $OUT/<part>.log; paste the tables into RESULTS.md with the date and device.
set -euo pipefail
part=${1:?usage: gpu_session.sh tests|llava7b|llava7b_qlora|video7b|eval}
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/$part.log"
case "$part" in
  tests)
    python3 -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee -a "$out/$part.log"
    python3 benchmarks/logsoftmax_speed.py --device cuda 2>&1 | tee -a "$out/$part.log" ;;
  llava7b|llava7b_qlora|video7b)
    python3 benchmarks/train_vs_trl.py --device cuda --configs "$part" --rounds 1 --warmup 2 --steps 6 \
      --work /tmp/tvt 2>&1 | tee -a "$out/$part.log" ;;
  eval)
    python3 benchmarks/eval_speed.py --device cuda --size 7b --images 20 --repeats 2 2>&1 | tee -a "$out/$part.log" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
