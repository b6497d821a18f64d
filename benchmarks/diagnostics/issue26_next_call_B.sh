#!/usr/bin/env bash
# Issue 26's next device call B (written in session 14, 2026-12-08): the two profiles as a user runs them, on the
# final code (after call A's decisions are committed): `effprof compare cobra-vs-llava` in full (about 430 s on
# an H100; its compile row now keeps Cobra's towers on two streams, and every row's bytes follow the corrected
# count: a KV cache's new slot, one embedding row), then `effprof compare mamba-scaling` (about 40 s).
# Run: `LIMIT=570 bash benchmarks/diagnostics/issue26_next_call_B.sh`. Results: $OUT/c.tgz (packed after every step).
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
echo "cobra-vs-llava start $(date -u +%T)" >> $R/gpu.txt
timeout "$(left)" python -m effprof compare cobra-vs-llava --json $R/cobra-vs-llava.json --csv $R/cobra-vs-llava.csv > $R/cobra-vs-llava.log 2>&1
echo "cobra-vs-llava rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -vE "^\s*$|Warning|warn" $R/cobra-vs-llava.log | cut -c1-200 | tail -40; pack
[ "$(left)" -gt 60 ] && timeout "$(left)" python -m effprof compare mamba-scaling --json $R/mamba-scaling.json --csv $R/mamba-scaling.csv > $R/mamba-scaling.log 2>&1
echo "mamba-scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cut -c1-180 $R/mamba-scaling.log | tail -20; pack
