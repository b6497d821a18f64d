#!/usr/bin/env bash
# Session 13, device call B (issue 26), on the machine call A left warm, each step only while time is left:
#  1. Cobra-3B and LLaVA-1.5-7B TTFT under torch.compile + CUDA graphs (does compiling close Cobra's vision gap?);
#  2. the batch-1 scan with a time split (s4-w2-ioc-k2/k4) against the default, at 2.8B's and 130m's widths;
#  3. decode rows, if call A did not reach them;
#  4. batch-1 prefill of Mamba-2.8B and the transformer of its size at L = 512, 793, 2,048;
#  5. Nsight Compute on the batch-1 scan (1 x 5120 x 793, channel-last): stall reasons.
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
for m in cobra llava; do
  timeout 200 python -m effprof run $m --mode prefill --dtype bf16 --graphs --compile --min-time 0.5 \
    --json $R/ttft_compile_$m.json > $R/ttft_compile_$m.log 2>&1
  echo "ttft compile $m rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cut -c1-160 $R/ttft_compile_$m.log | head -14; pack
done
[ "$(left)" -gt 90 ] && timeout 80 python benchmarks/bench_mamba_prefill.py --scan --scan-configs default,old-default,s4-w2-ioc-k2,s4-w2-ioc-k4 \
  --scan-shapes "1,5120,793,1;1,5120,2048,1;1,1536,793,1;1,1536,2048,1" --out $R/scan.json > $R/scan.log 2>&1
echo "scan rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -12 $R/scan.log | cut -c1-160; pack
if [ -n "${DECODE:-}" ]; then mkdir -p $R/decode
  [ "$(left)" -gt 60 ] && timeout "$(left)" python benchmarks/bench_mamba_decode.py --out $R/decode --only calibrate,layers,cobra \
    --rows "130m:triton;2.8b:triton" --cobra-variants triton > $R/decode.log 2>&1
  echo "decode rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -14 $R/decode.log | cut -c1-200; pack; fi
[ "$(left)" -gt 150 ] && timeout "$(( $(left) - 60 ))" python benchmarks/bench_mamba_prefill.py --scaling --models mamba,transformer \
  --presets 2.8b --lengths 512,793,2048 --min-time 0.1 --out $R/scaling.json > $R/scaling.log 2>&1
echo "scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -iE "ceiling|prefill|L=" $R/scaling.log | tail -12 | cut -c1-200; pack
[ "$(left)" -gt 25 ] && timeout "$(left)" ncu --kernel-name regex:_scan_ --launch-skip 2 --launch-count 1 --section SchedulerStats \
  --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis --section LaunchStats \
  python benchmarks/diagnostics/ncu_scan.py '' 1x5120x793xcl > $R/ncu.log 2>&1
echo "ncu rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; pack
