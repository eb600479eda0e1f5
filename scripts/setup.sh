#!/usr/bin/env bash
# Create .venv and install attnlab with its test extras. Idempotent; offline apart from the package registries.
# torch is pinned to the CPU build 2.13.0 first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch" 
fi
if ! .venv/bin/python -c "import attnlab.core, pytest, hypothesis, umap" 2>/dev/null || [ pyproject.toml -nt .venv/.attnlab-installed ]; then
  .venv/bin/pip install -q "torch==2.13.0" -e ".[test,fast]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import attnlab.core, attnlab.kernels, attnlab.hooks" 
  touch .venv/.attnlab-installed
fi
