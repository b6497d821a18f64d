#!/usr/bin/env python3
"""Run the Triton selective scan a few times at the benchmark shape, for Nsight Compute to profile.

    ncu --kernel-name regex:_scan_ --launch-skip 2 --launch-count 1 \\
        --section SchedulerStats --section WarpStateStats --section Occupancy \\
        python benchmarks/ncu_scan.py [KEY=VALUE+KEY=VALUE...]

The argument overrides the kernel's config (see selective_scan_triton), e.g. fast_unpack=1+pair_states=1
(no commas: run_gpu.sh splits its arguments on them).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from benchmarks.bench_scan import scan_inputs  # noqa: E402
from effprof.ops.selective_scan_triton import selective_scan_triton  # noqa: E402

items = [item.split("=") for item in sys.argv[1].split("+") if item] if len(sys.argv) > 1 else []
if any(len(item) != 2 for item in items) or not torch.cuda.is_available():
    sys.exit("ncu_scan.py: usage KEY=VALUE+KEY=VALUE (e.g. fast_unpack=1+pair_states=1), on a CUDA device")
try:
    config = {key: json.loads(value) for key, value in items}
except json.JSONDecodeError as exc:
    sys.exit(f"ncu_scan.py: a value is not a number or true/false: {exc.doc!r}")
inputs = scan_inputs(8, 1536, 4096, 16, torch.bfloat16, torch.device("cuda"))
for _ in range(4):
    selective_scan_triton(**inputs, delta_softplus=True, config=config)
torch.cuda.synchronize()
print("config", config or "default")
