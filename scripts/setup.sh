#!/usr/bin/env bash
# Set up effprof in a virtual environment: ./scripts/setup.sh [extras], e.g. ./scripts/setup.sh dev
# - The venv sees the system's site-packages, so a torch that already imports (a user's CUDA build)
#   is kept; torch==2.13.0 is installed only when no torch imports.
# - Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${1:-}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
if "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: no importable torch; installing torch==2.13.0"
  "$PY" -m pip install -q torch==2.13.0
fi
# The test suite runs effprof's Triton kernels under TRITON_INTERPRET=1 on CPU. Like torch, an importable
# triton (the one a CUDA torch ships with) is kept; only where none imports is 3.6.0 installed.
if [ "$EXTRAS" = dev ] && ! "$PY" -c "import triton" >/dev/null 2>&1; then
  echo "setup: no importable triton; installing triton==3.6.0 for the interpreter tests"
  "$PY" -m pip install -q triton==3.6.0
fi
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
"$PY" -m pip install -q -e "$SPEC"
echo "setup: done ($("$VENV/bin/effprof" --help >/dev/null && echo effprof ok))"
