#!/usr/bin/env bash
# GPU checks of issue 25's execution part: what a failed capture leaves and its recovery, a failed-capture row
# between rows that must run, training steps replayed from one CUDA graph (clip-lora subset, two passes and the
# eager figure of two rows), token-reduction's defaults on the tiny LLaVA. Writes JSON and logs under OUT.
# Usage (from the repository root, on a GPU machine): OUT=results/DIR bash benchmarks/exec_checks/run_exec_checks.sh
set -u
OUT=${OUT:-benchmarks/results/exec-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
here=benchmarks/exec_checks
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; date -u; } > "$OUT/env.txt" 2>&1
python $here/probe_recover.py > "$OUT/probe_recover.json" 2>&1
python -m effprof compare $here/isolation.yaml --no-isolate --json "$OUT/isolation.json" > "$OUT/isolation.log" 2>&1
python -m effprof compare $here/clip-lora-subset.yaml --json "$OUT/clip_lora_pass1.json" > "$OUT/clip_lora.log" 2>&1
python -m effprof compare $here/token-reduction-tiny.yaml --json "$OUT/token_reduction_tiny.json" > "$OUT/token_reduction_tiny.log" 2>&1
python -m effprof compare $here/clip-lora-subset.yaml --json "$OUT/clip_lora_pass2.json" >> "$OUT/clip_lora.log" 2>&1
python -m effprof compare $here/clip-lora-subset.yaml --eager --json "$OUT/clip_lora_eager.json" >> "$OUT/clip_lora.log" 2>&1
echo done >> "$OUT/env.txt"
