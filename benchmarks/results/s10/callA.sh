#!/usr/bin/env bash
# Session 10, device call A (issue 26): CUDA tests of the new paths, the Cobra TTFT diagnostics, the batch-1
# prefill scaling table (Mamba and the transformer of the same size class), TTFT rows and decode rows.
# Run from the repo root on the device machine; everything lands in $OUT/a.tgz (plus the log).
set -uo pipefail
export PYTHONUNBUFFERED=1
R=$(mktemp -d)
pack() { tar -czf $OUT/a.tgz -C $R .; }   # after every step: a call cut at its limit still brings back what ran
pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  date -u; } > $R/gpu.txt
cat $R/gpu.txt; pack
python -m pytest -q -x -p no:cacheprovider tests/test_vlm.py tests/test_mamba.py tests/test_selective_scan.py \
  tests/test_mamba_kernels.py -k "cuda or tower or state" > $R/tests.log 2>&1; tail -3 $R/tests.log; pack
python -m effprof calibrate > $R/calibrate.log 2>&1; tail -2 $R/calibrate.log; pack
OUT=$R timeout 150 python benchmarks/diagnostics/diag_cobra_ttft.py --only small,towers,lm > $R/diag.log 2>&1; tail -1 $R/diag.log; pack
timeout 300 python benchmarks/bench_mamba_prefill.py --cobra --cobra-rows "cobra TTFT,cobra TTFT sequential towers,llava TTFT,cobra decode 1k" --scaling --models mamba,transformer --presets 2.8b,130m \
  --lengths 128,512,793,1024,2048,4096,16384 --min-time 0.1 --out $R/prefill.json > $R/prefill.log 2>&1; grep -E "ceiling|TTFT|decode" $R/prefill.log | head -5; pack
for p in 2.8b 130m; do
  timeout 60 python -m effprof run mamba-lm --preset $p --mode decode --dtype bf16 --graphs --min-time 0.5 \
    --json $R/decode_$p.json > $R/decode_$p.log 2>&1; grep -m1 -E "mamba" $R/decode_$p.log; pack
done
