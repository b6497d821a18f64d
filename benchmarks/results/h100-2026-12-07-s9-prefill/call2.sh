#!/bin/bash
# GPU call 2 of task s9-prefill: final figures (scan sweep -> batch-1 configs written into the source, model rows
# after/before, Cobra TTFT, kernel breakdown, calibrate, effprof compare cobra-vs-llava)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
R=$OUT/run.log; BASE=$(cd ../prefill-base && pwd); B=benchmarks/bench_mamba_prefill.py
{ nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv; date -u
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"; } > $R 2>&1
CFG=default,old-default,s4-ioc,s4-w2-ioc,s4-w1-ioc,tp2-w2-ioc,tp2-w4-ioc,tp4-w2-ioc
SH="1,5120,793,1;1,5120,2048,1;1,1536,793,1;1,1536,2048,1;8,1536,4096,0"
(timeout 100 python -m pytest -q -n 4 -p no:cacheprovider tests/test_mamba.py tests/test_selective_scan_split.py \
   -k "cuda_scan or keeps_A or (time_parts and shape6)" > /tmp/tests.log 2>&1; echo "tests rc=$?" >> /tmp/tests.log) &
for i in 0 1 2 3 4 5 6 7 8 9; do
  timeout 100 python $B --scan --scan-check-only --scan-configs $CFG --scan-shapes "$SH" --scan-part $i/10 --out /tmp/check_$i.json > /tmp/check_$i.log 2>&1 &
done
wait
tail -4 /tmp/tests.log >> $R; grep -h "Error\|error=" /tmp/check_*.log | head -5 >> $R
echo "== calibrate" >> $R; timeout 45 python -m effprof calibrate >> $R 2>&1
echo "== scan sweep" >> $R
timeout 70 python $B --scan --scan-configs $CFG --scan-shapes "$SH" --batch1 best --batch1-write --label new --out $OUT/scan.json >> $R 2>&1
grep -n "^BATCH1" effprof/ops/selective_scan_triton.py >> $R
echo "== new" >> $R
timeout 100 python $B --scaling --cobra --presets 2.8b,130m --lengths 128,512,793,1024,2048,4096,16384 --min-time 0.1 --label new --out $OUT/new.json >> $R 2>&1
echo "== base" >> $R
timeout 50 python $B --code $BASE --scaling --cobra --cobra-rows "cobra TTFT" --presets 2.8b,130m --lengths 512,793,2048 --min-time 0.1 --label base --out $OUT/base.json >> $R 2>&1
timeout 35 python -m effprof breakdown mamba-lm --preset 2.8b --seq-len 793 --mode prefill --kernels 20 > $OUT/breakdown.txt 2>&1
grep -E "^(scan|batch|prefill|bf16|cobra|llava)|rc=" $R | cut -c1-140
