#!/usr/bin/env bash
# The one-shot GPU table (medjax/bench/gpu.py): every bench row at its protocol shape, float32 and
# bfloat16, medjax against torch eager / autocast / torch.compile, with MFU. Sized for one device call of at most
# 10 minutes on a lent H100/H200 (the device tool's README), from the repository root:
#
#   bash medjax/bench/gpu.sh [OUT_DIR] [--smoke] [--cases NAME ...]   # OUT_DIR: $OUT or runs/gpu
#
# The GPU image has jax (CUDA), flax, optax, orbax and torch but not monai or ml_collections: download them here
# first (pure-Python wheels, `.whl/` is git-ignored) and carry `.whl` with the call:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1 ml-collections
# `--smoke` runs the same script at tiny shapes on whatever backend is there (the test suite does, on the CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-runs/gpu}"
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then out="$1"; shift; fi
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/medjax-site .whl/*.whl
  export PYTHONPATH="/tmp/medjax-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec "$PY" -m medjax.bench.gpu --out "$out" --budget-s "${BUDGET_S:-480}" "$@"
