#!/usr/bin/env bash
# Scaling of DDP / FSDP2 over every GPU count up to all GPUs of this host (see scaling.py's docstring).
#   OUT=/path/to/results bash packages/tinylm-dist/benchmarks/scaling.sh [--gpus 1,2] [--presets large]
# Packages are used from source (no install): packages/*/src on PYTHONPATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PYTHONPATH="$(printf '%s:' "$ROOT"/packages/*/src)${PYTHONPATH:-}"
export PYTHONPATH
PYTHON="${PYTHON:-python3}"
exec "$PYTHON" "$ROOT/packages/tinylm-dist/benchmarks/scaling.py" --out "${OUT:-$ROOT/scaling_out}" "$@"
