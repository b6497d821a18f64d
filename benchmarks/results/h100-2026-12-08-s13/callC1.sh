#!/usr/bin/env bash
# Session 13, device call C1 (issue 26), main at 81c2a29 or later:
#  0. the CUDA tests of the kept A and of a block built under inference mode (the decode bench's crash in call A);
#  1. `effprof compare cobra-vs-llava` in full as a user runs it (14 rows: TTFT under compile + graphs added,
#     compile rows of staged components now compile each stage, and the split times the compiled stages);
#  2. if time is left: `effprof compare mamba-scaling` in full (half a second of timing a row now).
# Results: $OUT/c.tgz (packed after every step).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d); export R
START=$(date +%s); LIMIT=${LIMIT:-585}
left() { echo $(( LIMIT - 10 - ($(date +%s) - START) )); }
pack() { tar -czf $OUT/c.tgz -C $R .; }
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  git log --oneline -1; date -u; } > $R/gpu.txt
cat $R/gpu.txt; pack
timeout 60 python -m pytest -v -rfE --tb=short -p no:cacheprovider tests/test_mamba.py -k "keeps_A or inference_mode_computes_A" > $R/tests_A.log 2>&1
echo "A tests rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -E "passed|failed" $R/tests_A.log | tail -1; pack
echo "cobra-vs-llava start $(date -u +%T)" >> $R/gpu.txt
timeout "$(left)" python -m effprof compare cobra-vs-llava --json $R/cobra-vs-llava.json --csv $R/cobra-vs-llava.csv > $R/cobra-vs-llava.log 2>&1
echo "cobra-vs-llava rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -vE "^\s*$|Warning|warn" $R/cobra-vs-llava.log | cut -c1-200 | tail -40; pack
if [ "$(left)" -gt 80 ]; then
  echo "mamba-scaling start $(date -u +%T)" >> $R/gpu.txt
  timeout "$(left)" python -m effprof compare mamba-scaling --json $R/mamba-scaling.json --csv $R/mamba-scaling.csv > $R/mamba-scaling.log 2>&1
  echo "mamba-scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -E "mamba L|transformer L|unsteady|fail" $R/mamba-scaling.log | cut -c1-140; pack
fi
