#!/usr/bin/env bash
# GPU checks of issue 25's execution part, about 4 minutes on one H100/H200: what a failed capture leaves and its
# recovery (probe_recover.py), a failed-capture row between rows that must run, training steps replayed from one
# CUDA graph (a clip-lora subset: two passes, then its eager figure), token-reduction's defaults on the tiny LLaVA,
# tome-vit under its graphs default. Writes 8 files under OUT (the device tool returns at most 8).
# Usage (from the repository root, on a GPU machine): OUT=DIR bash benchmarks/exec_checks/run_exec_checks.sh
set -u
OUT=${OUT:-benchmarks/results/exec-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
here=benchmarks/exec_checks
log="$OUT/checks.log"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  date -u; } > "$log" 2>&1
python $here/probe_recover.py > "$OUT/probe_recover.json" 2>> "$log"
run() { echo "== effprof compare $*" >> "$log"; python -m effprof compare "$@" >> "$log" 2>&1; echo "exit $?" >> "$log"; }
run $here/isolation.yaml --no-isolate --json "$OUT/isolation.json"
run $here/clip-lora-subset.yaml --json "$OUT/clip_lora_pass1.json"
run $here/token-reduction-tiny.yaml --json "$OUT/token_reduction_tiny.json"
run $here/clip-lora-subset.yaml --json "$OUT/clip_lora_pass2.json"
run $here/clip-lora-subset.yaml --eager --json "$OUT/clip_lora_eager.json"
run tome-vit --json "$OUT/tome_vit.json"
echo done >> "$log"
