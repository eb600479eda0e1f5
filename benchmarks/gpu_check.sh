#!/usr/bin/env bash
# The GPU check of issue 21: bash benchmarks/gpu_check.sh [--dry-run] [--skip STAGE...]
# Needs a CUDA build of torch and triton (PYTHON=... picks the interpreter; default .venv/bin/python).
# Prints one JSON line on stdout (progress goes to stderr); exits 0 only when every stage ran and passed.
# Without a GPU it fails at once (exit 2) instead of falling back to the CPU; --dry-run runs every stage
# on the CPU at tiny sizes. A hard limit of 480 s stops a run that would overrun the 8-minute budget.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
if [[ " $* " != *" --dry-run "* ]]; then
  unset TRITON_INTERPRET
fi
timeout --signal=TERM --kill-after=10 "${GPU_CHECK_LIMIT_S:-480}" "$PY" benchmarks/gpu_check.py "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "{\"ok\": false, \"error\": \"gpu_check exceeded ${GPU_CHECK_LIMIT_S:-480} s and was stopped\"}"
fi
exit "$rc"
