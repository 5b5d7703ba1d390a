#!/usr/bin/env bash
# The GPU check in one command, on a GPU machine (docs/gpu-check.md):
#
#     bash bench/gpu/run.sh [gpu_check.py run options, e.g. --budget 450 --only env,depth]
#
# Reads the carry folder made here by bench/gpu/prepare.sh (GPU_CARRY, default .gpu-carry), works
# in GPU_CHECK_WORK (default /tmp/gpu-check) and writes gpu_check.json, gpu_check.log and a few
# files to $OUT (the device tool sets it; default /tmp/gpu-check-out). PYTHON picks the interpreter
# (default python3: on the GPU machine, the one that holds its CUDA torch).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
export PYTHONUNBUFFERED=1 SPLATPIPE_STATUS_STORE=log
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-${TMPDIR:-/tmp}/gpu-check-out}
CARRY=${GPU_CARRY:-.gpu-carry}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
mkdir -p "$OUT_DIR" "$WORK"
exec "$PY" bench/gpu/gpu_check.py run --carry "$CARRY" --out "$OUT_DIR" --work "$WORK" "$@"
