#!/usr/bin/env bash
# Session 13, device call A (issue 26), each step only while time is left:
#  0. the time split's CUDA tests (session 12 took C and partial y out of its first launch; untested on a GPU);
#  1. `effprof compare mamba-scaling` in full as a user runs it (CUDA graphs by default since session 12);
#  2. on an H200 only: `effprof compare cobra-vs-llava` in full (the SigLIP change has run on an H100 alone);
#  3. where eager Mamba-130m's host time goes (diag_host_overhead.py, cProfile);
#  4. decode: Mamba-130m and Mamba-2.8B (batch 1, graphs, LM head, context 1k) and Cobra-3B, with the ceilings.
# Results: $OUT/c.tgz (packed after every step).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d); export R
START=$(date +%s); LIMIT=${LIMIT:-570}
left() { echo $(( LIMIT - 10 - ($(date +%s) - START) )); }
pack() { tar -czf $OUT/c.tgz -C $R .; }
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  git log --oneline -1; date -u; } > $R/gpu.txt
cat $R/gpu.txt; pack
timeout 120 python -m pytest -v -rfE --tb=short -p no:cacheprovider tests/test_selective_scan_split.py -k cuda > $R/tests_split.log 2>&1
echo "time-split tests rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -E "passed|failed" $R/tests_split.log | tail -1; pack
echo "mamba-scaling start $(date -u +%T)" >> $R/gpu.txt
timeout "$(left)" python -m effprof compare mamba-scaling --json $R/mamba-scaling.json --csv $R/mamba-scaling.csv > $R/mamba-scaling.log 2>&1
echo "mamba-scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cat $R/mamba-scaling.log | cut -c1-180; pack
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && [ "$(left)" -gt 330 ]; then
  echo "cobra-vs-llava start $(date -u +%T)" >> $R/gpu.txt
  timeout "$(left)" python -m effprof compare cobra-vs-llava --json $R/cobra-vs-llava.json --csv $R/cobra-vs-llava.csv > $R/cobra-vs-llava.log 2>&1
  echo "cobra-vs-llava rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cut -c1-180 $R/cobra-vs-llava.log; pack
fi
timeout 60 python benchmarks/diagnostics/diag_host_overhead.py > $R/host.log 2>&1
echo "host rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; head -40 $R/host.log | cut -c1-160; pack
mkdir -p $R/decode
[ "$(left)" -gt 60 ] && timeout "$(left)" python benchmarks/bench_mamba_decode.py --out $R/decode --only calibrate,layers,cobra \
  --rows "130m:triton;2.8b:triton" --cobra-variants triton > $R/decode.log 2>&1
echo "decode rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -14 $R/decode.log | cut -c1-200; pack
