#!/usr/bin/env bash
# Session 10, device call B (issue 26): the two built-in profiles issue 26 touches, in full, as a user runs them.
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d)
pack() { tar -czf $OUT/b.tgz -C $R .; }
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; date -u; } > $R/gpu.txt; cat $R/gpu.txt; pack
python -m effprof calibrate > $R/calibrate.log 2>&1; tail -1 $R/calibrate.log; pack
for p in mamba-scaling cobra-vs-llava; do
  python -m effprof compare $p --json $R/$p.json --csv $R/$p.csv > $R/$p.log 2>&1; echo "$p rc=$?"; tail -30 $R/$p.log; pack
done
