#!/usr/bin/env bash
# Session 10, device call C (issue 26), one call for want of machines: CUDA tests of the new paths, the TTFT rows
# with both tower modes, the batch-1 prefill scaling table (Mamba and the transformer of the same size class),
# and the two built-in profiles issue 26 touches, in full, as a user runs them; most needed first, each later
# step only if time is left. Results: $OUT/c.tgz.
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d)
START=$(date +%s); LIMIT=${LIMIT:-590}   # the call's time limit: later steps get what is left
left() { echo $(( LIMIT - 15 - ($(date +%s) - START) )); }
pack() { tar -czf $OUT/c.tgz -C $R .; }   # after every step: a call cut at its limit still brings back what ran
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  date -u; } > $R/gpu.txt
cat $R/gpu.txt; pack
timeout 80 python -m pytest -q -x -p no:cacheprovider tests/test_vlm.py tests/test_mamba.py tests/test_selective_scan.py \
  tests/test_mamba_kernels.py -k "cuda or tower or (state and not interpreter)" > $R/tests.log 2>&1; tail -2 $R/tests.log; pack
[ "$(left)" -gt 60 ] && timeout "$(left)" python benchmarks/bench_mamba_prefill.py --cobra --cobra-rows "cobra TTFT,cobra TTFT sequential towers" \
  --scaling --models mamba,transformer --presets 2.8b,130m --lengths 512,793,2048,16384 --min-time 0.1 \
  --out $R/prefill.json > $R/prefill.log 2>&1; grep -E "ceiling|TTFT" $R/prefill.log | head -4; pack
for p in cobra-vs-llava; do
  date -u >> $R/gpu.txt
  [ "$(left)" -gt 60 ] || { echo "$p skipped: no time left" | tee -a $R/gpu.txt; continue; }
  timeout "$(left)" python -m effprof compare $p --json $R/$p.json --csv $R/$p.csv > $R/$p.log 2>&1; echo "$p rc=$?"; pack
done
for p in mamba-scaling; do
  date -u >> $R/gpu.txt
  [ "$(left)" -gt 60 ] || { echo "$p skipped: no time left" | tee -a $R/gpu.txt; continue; }
  timeout "$(left)" python -m effprof compare $p --json $R/$p.json --csv $R/$p.csv > $R/$p.log 2>&1; echo "$p rc=$?"; pack
done
date -u >> $R/gpu.txt; pack
