#!/bin/bash
# GPU call 1 of task s9-prefill (run from .gpuwork/prefill = a git archive of 77ba9d8, base = f299376 in ../prefill-base):
# CUDA correctness of the new scan configs, the batch-1 sweep, a first model-level look
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L
BASE=$(cd ../prefill-base && pwd)
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv > $L/gpu.txt
date -u > $L/date.txt
B=benchmarks/bench_mamba_prefill.py
# 1. correctness (pytest-xdist) and the sweep's compile-and-check slices, side by side
(timeout 200 python -m pytest -q -n 6 -p no:cacheprovider tests/test_selective_scan_split.py tests/test_selective_scan.py \
   tests/test_mamba.py -k "time_parts or lanes_time_split or (cuda_kernels and lanes_order_warp) or keeps_A" > $L/tests.log 2>&1; echo "tests rc=$?" >> $L/tests.log) &
for i in 0 1 2 3 4 5 6 7 8 9; do
  timeout 200 python $B --scan --scan-check-only --scan-part $i/10 --scan-shapes "1,5120,793,1;1,5120,2048,1;1,1536,793,1;1,1536,2048,1;1,1536,16384,1;8,1536,4096,0" --out $L/check_$i.json > $L/check_$i.log 2>&1 &
done
wait
# 2. timing of every config (kernels come from the disk cache), then the model with the best batch-1 configs
timeout 150 python $B --scan --scan-shapes "1,5120,793,1;1,5120,2048,1;1,1536,793,1;1,1536,2048,1;1,1536,16384,1;8,1536,4096,0" \
   --batch1 best --scaling --presets 2.8b,130m --lengths 512,793,2048 --min-time 0.1 --label new --out $L/new.json > $L/new.log 2>&1
timeout 60 python $B --code $BASE --scaling --presets 2.8b,130m --lengths 512,793,2048 --min-time 0.1 --label base --out $L/base.json > $L/base.log 2>&1
# 3. kernel breakdown of 2.8B prefill at 793, new (code defaults of that commit) and base
timeout 60 python -m effprof breakdown mamba-lm --preset 2.8b --seq-len 793 --mode prefill --kernels 20 > $L/breakdown_new.txt 2>&1
(cd $BASE && PYTHONPATH=$BASE timeout 60 python -m effprof breakdown mamba-lm --preset 2.8b --seq-len 793 --mode prefill --kernels 20) > $L/breakdown_base.txt 2>&1
cd $OUT && tar czf call1.tar.gz logs && rm -rf logs
