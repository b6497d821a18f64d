#!/usr/bin/env bash
# Session 12, device call 1 (issue 26): the two GPU profiles in full, as a user runs them, then the CUDA tests.
#  1. `effprof compare mamba-scaling` (never run in full since the issue was filed);
#  2. `effprof compare cobra-vs-llava` (Cobra's SigLIP tower now on row-major memory, 14349cc);
#  3. the CUDA selection of tests, verbose, while time is left.
# Results: $OUT/c.tgz (packed after every step).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d); export R
START=$(date +%s); LIMIT=${LIMIT:-590}
left() { echo $(( LIMIT - 15 - ($(date +%s) - START) )); }
pack() { tar -czf $OUT/c.tgz -C $R .; }
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  git log --oneline -1; date -u; } > $R/gpu.txt
cat $R/gpu.txt; pack
for p in mamba-scaling cobra-vs-llava; do
  echo "$p start $(date -u +%T)" >> $R/gpu.txt
  timeout "$(left)" python -m effprof compare $p --json $R/$p.json --csv $R/$p.csv > $R/$p.log 2>&1
  echo "$p rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -30 $R/$p.log; pack
done
[ "$(left)" -gt 40 ] && timeout "$(left)" python -m pytest -v -rfE --tb=short -p no:cacheprovider \
  tests/test_vlm.py tests/test_mamba_gemm_alignment.py tests/test_selective_scan.py tests/test_mamba_kernels.py tests/test_mamba.py \
  -k "cuda or tower or (state and not interpreter) or batch1" > $R/tests.log 2>&1
echo "tests rc=$? $(date -u +%T)" >> $R/gpu.txt; grep -E "passed|failed" $R/tests.log | tail -3; pack
