#!/usr/bin/env bash
# Session 13, device call C2 (issue 26), on the machine C1 left warm:
#  1. `effprof compare mamba-scaling` in full, unless C1 reached it (SKIP_SCALING=1);
#  2. decode: Mamba-130m and Mamba-2.8B (batch 1, graphs, LM head, context 1k) and Cobra-3B, with the ceilings
#     (call A's run crashed on the model built under inference mode; fixed in 81c2a29).
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
if [ -z "${SKIP_SCALING:-}" ]; then
  echo "mamba-scaling start $(date -u +%T)" >> $R/gpu.txt
  timeout "$(left)" python -m effprof compare mamba-scaling --json $R/mamba-scaling.json --csv $R/mamba-scaling.csv > $R/mamba-scaling.log 2>&1
  echo "mamba-scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -E "mamba L|transformer L|unsteady|fail" $R/mamba-scaling.log | cut -c1-140; pack
fi
mkdir -p $R/decode
timeout "$(left)" python benchmarks/bench_mamba_decode.py --out $R/decode --only calibrate,layers,cobra \
  --rows "130m:triton;2.8b:triton" --cobra-variants triton > $R/decode.log 2>&1
echo "decode rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -16 $R/decode.log | cut -c1-200; pack
