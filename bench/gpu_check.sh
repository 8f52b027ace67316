#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it measures and writes). On a GPU
# machine holding this repository and the wheels of `make gpu-wheels` in .whl/:
#     bash bench/gpu_check.sh [--out DIR] [--minutes 2] [--config configs/adni256.yaml] [--key value]
# PYTHON picks the interpreter (default python3: a GPU image's Python with PyTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m bench.gpu_check "$@"
