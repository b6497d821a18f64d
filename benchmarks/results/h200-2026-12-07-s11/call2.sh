#!/usr/bin/env bash
# Session 11, device call 2 (issue 26), on the tree after the kernels of call 1 were removed (the code of 13a6aad):
# `effprof compare mamba-scaling` in full as a user runs it; the CUDA tests session 10 could not finish (verbose, so a
# call cut at its limit still shows each result); Mamba-130m and -2.8B decode steps (graphs). Each step only while
# time is left. Results: $OUT/c.tgz (packed after every step).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d)
START=$(date +%s); LIMIT=${LIMIT:-590}
left() { echo $(( LIMIT - 15 - ($(date +%s) - START) )); }
pack() { tar -czf $OUT/c.tgz -C $R .; }
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  date -u; } > $R/gpu.txt
cat $R/gpu.txt; pack
echo "mamba-scaling start $(date -u +%T)" >> $R/gpu.txt
timeout "$(( $(left) - 150 ))" python -m effprof compare mamba-scaling --json $R/mamba-scaling.json --csv $R/mamba-scaling.csv > $R/mamba-scaling.log 2>&1
echo "mamba-scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; pack
[ "$(left)" -gt 40 ] && timeout "$(( $(left) - 30 ))" python -m pytest -v -rfE --tb=short -p no:cacheprovider tests/test_mamba.py tests/test_selective_scan.py \
  tests/test_mamba_kernels.py tests/test_mamba_gemm_alignment.py tests/test_vlm.py \
  -k "cuda or tower or (state and not interpreter) or batch1" > $R/tests.log 2>&1; grep -cE "PASSED" $R/tests.log; grep -E "FAILED|ERROR" $R/tests.log | head; pack
for p in 130m 2.8b; do
  [ "$(left)" -gt 25 ] || break
  timeout "$(left)" python -m effprof run mamba-lm --preset $p --mode decode --head --graphs > $R/decode_$p.log 2>&1; echo "decode $p rc=$?"; pack
done
date -u >> $R/gpu.txt; pack
