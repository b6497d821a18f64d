#!/usr/bin/env bash
# Issue 26's next two device calls (written in session 14, 2026-12-08, when no device was lent). Run
# `CALL=A LIMIT=560 bash benchmarks/diagnostics/issue26_next_calls.sh`, commit what it decides, then
# `CALL=B LIMIT=570 bash ...` on the final code. Each step only while time is left. Results: $OUT/c.tgz (packed
# after every step).
# Call A:
#  0. CUDA tests of this session's changes: Cobra's towers on two streams under torch.compile, and the decode
#     step with bulk L2 prefetches (values unchanged, eager and in a CUDA graph);
#  1. decode: Mamba-2.8B's per-layer kernels with bulk L2 prefetch of 4-24 MB of out_proj's weight during the
#     state update (after / before its wait), of 8-16 MB of the next in_proj during out_proj, and both, against
#     the default, twice;
#  2. Cobra-3B's TTFT under compile + graphs with the towers on two streams (session 13: 17.08 ms, vision 4.98
#     with the towers in turn under compile), and the LLaVA decode row at 16k with the corrected byte count;
#  3. the causal conv's block shapes at Cobra's shape, and a one-pass dt_proj (diag_cobra_ttft.py small);
#  4. the batch-1 scan with 64- and 16-step chunks against the default (same instructions per element, half /
#     twice the barriers).
# Call B: the two profiles as a user runs them: `effprof compare cobra-vs-llava` in full (about 430 s on an H100
# before this session's counting change; its compile row now keeps Cobra's towers on two streams, and every
# row's bytes follow the corrected count), then `effprof compare mamba-scaling` (about 40 s).
set -uo pipefail
case "${CALL:-A}" in A|B) ;; *) echo "CALL must be A or B, not '${CALL}'" >&2; exit 2;; esac
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
if [ "${CALL:-A}" = A ]; then
timeout 200 python -m pytest -v -rfE --tb=short -p no:cacheprovider tests/test_vlm.py tests/test_mamba_kernels.py \
  -k "two_streams_under_compile or concurrent_towers_equal or persistent_step_and_l2 or bulk" > $R/tests.log 2>&1
echo "tests rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -E "PASS|FAIL|ERROR|passed|failed" $R/tests.log | cut -c1-160 | tail -16; pack
mkdir -p $R/decode
timeout 150 python benchmarks/bench_mamba_decode.py --out $R/decode --only calibrate,layers \
  --rows "2.8b:triton,triton-bulk4m,triton-bulk8m,triton-bulk16m,triton-bulk24m,triton-bulk8m-early,triton-bulkin8m,triton-bulkin16m,triton-bulk8m-in8m,triton" \
  > $R/decode.log 2>&1
echo "decode rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -14 $R/decode.log | cut -c1-200; pack
[ "$(left)" -gt 150 ] && timeout 200 python -m effprof run cobra --mode prefill --dtype bf16 --graphs --compile --min-time 0.5 \
    --json $R/ttft_compile_cobra.json > $R/ttft_compile_cobra.log 2>&1
echo "ttft compile cobra rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cut -c1-160 $R/ttft_compile_cobra.log | head -16; pack
[ "$(left)" -gt 90 ] && timeout 80 python -m effprof run llava --mode decode --context 16384 --dtype bf16 --graphs --min-time 0.5 \
    --columns full --json $R/llava_decode_16k.json > $R/llava_decode_16k.log 2>&1
echo "llava decode 16k rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cut -c1-200 $R/llava_decode_16k.log | tail -12; pack
[ "$(left)" -gt 100 ] && OUT=$R timeout 90 python benchmarks/diagnostics/diag_cobra_ttft.py --only small > $R/small.log 2>&1
echo "small rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -5 $R/small.log | cut -c1-200; pack
[ "$(left)" -gt 40 ] && timeout "$(left)" python benchmarks/bench_mamba_prefill.py --scan \
  --scan-configs default,s4-w2-ioc-c64,s4-w2-ioc-c16 --scan-shapes "1,5120,793,1;1,5120,2048,1;1,5120,512,1" \
  --out $R/scan.json > $R/scan.log 2>&1
echo "scan rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; tail -10 $R/scan.log | cut -c1-160; pack
else
echo "cobra-vs-llava start $(date -u +%T)" >> $R/gpu.txt
timeout "$(left)" python -m effprof compare cobra-vs-llava --json $R/cobra-vs-llava.json --csv $R/cobra-vs-llava.csv > $R/cobra-vs-llava.log 2>&1
echo "cobra-vs-llava rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; grep -vE "^\s*$|Warning|warn" $R/cobra-vs-llava.log | cut -c1-200 | tail -40; pack
[ "$(left)" -gt 60 ] && timeout "$(left)" python -m effprof compare mamba-scaling --json $R/mamba-scaling.json --csv $R/mamba-scaling.csv > $R/mamba-scaling.log 2>&1
echo "mamba-scaling rc=$? $(date -u +%T)" | tee -a $R/gpu.txt; cut -c1-180 $R/mamba-scaling.log | tail -20; pack
fi
