#!/usr/bin/env bash
# Run GPU benchmarks on the device machine in one call: bash benchmarks/run_gpu.sh NAME[:ARGS] [...]
# NAME is a benchmarks/bench_NAME.py script (ARGS: comma-separated arguments, e.g. scan:--tune), another
# benchmarks/diagnostics/NAME.py script (diag_timing), "ncu" (Nsight Compute on the scan kernel; ARGS: configs as KEY=VALUE+KEY=VALUE) or "cli" (effprof compare projectors / clip-vtp through the
# command line). effprof is not installed there: `python -m effprof` from the repo root imports it.
# Every script writes its JSON to $OUT; logs go to $OUT/NAME.log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FINAL=${OUT:-/tmp/effprof-bench}
OUT=$(mktemp -d)  # the device tool brings back at most 8 files: everything goes into one archive
export OUT
mkdir -p "$FINAL"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
status=0
for spec in "$@"; do
  name=${spec%%:*}
  args=()
  [ "$spec" != "$name" ] && IFS=, read -r -a args <<< "${spec#*:}"
  start=$(date +%s)
  log="$OUT/$name.log"
  [ -e "$log" ] && log="$OUT/$name.$start.log"  # a second run of the same script keeps the first log
  if [ "$name" = cli ]; then
    # the README's commands on the GPU: the tables committed under benchmarks/ come from here
    { python3 -m effprof env &&
      python3 -m effprof calibrate &&
      python3 -m effprof compare projectors --json "$OUT/cli_projectors.json" &&
      python3 -m effprof compare projectors --graphs --min-time 0.5 --json "$OUT/cli_projectors_graphs.json" &&
      python3 -m effprof compare clip-vtp --json "$OUT/cli_clip_vtp.json" --plot "$OUT/clip_vtp.png" &&
      python3 -m effprof breakdown clip-vision --batch 64 --depth 3 &&
      python3 -m effprof roofline projectors --plot "$OUT/roofline_projectors.png" --min-time 0.3 &&
      python3 -m effprof run clip-vision --batch 1 --graphs --json "$OUT/cli_vit_b1_graphs.json" &&
      python3 -m effprof breakdown mamba --batch 8 --depth 1 --kernels 12 &&
      python3 -m effprof breakdown mamba-lm --seq-len 16384 --depth 1 --kernels 15 &&
      python3 -m effprof compare mamba-lm --grid mode=decode --grid head=true --grid seq_len=1024,16384 --graphs \
        --json "$OUT/cli_mamba_decode_graphs.json" &&
      { python3 -m effprof run transformer-lm --mode decode --head true --seq-len 4096 --graphs ||
        echo "(transformer-lm decode under --graphs refused, as printed above)"; }; } > "$log" 2>&1
  elif [ "$name" = ncu ]; then
    # Nsight Compute on the scan kernel: the default config and each ARGS entry (a JSON config)
    for config in '' "${args[@]}"; do
      ncu --kernel-name regex:_scan_ --launch-skip 2 --launch-count 1 --section SchedulerStats \
        --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis \
        python3 benchmarks/diagnostics/ncu_scan.py "$config"
    done > "$log" 2>&1
  else
    script="benchmarks/bench_$name.py"
    [ -e "$script" ] || script="benchmarks/diagnostics/$name.py"  # diag_timing and the other finished diagnostics
    python3 "$script" "${args[@]}" > "$log" 2>&1
  fi
  rc=$?
  [ $rc -eq 0 ] || status=1
  echo "== $name: $(( $(date +%s) - start )) s, exit $rc"; tail -n 40 "$log"
  tar -czf "$FINAL/results.tgz" -C "$OUT" .  # after every step: a later time-out loses nothing done
done
exit $status
