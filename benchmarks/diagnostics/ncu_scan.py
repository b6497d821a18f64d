#!/usr/bin/env python3
"""Run the Triton selective scan a few times at the benchmark shape, for Nsight Compute to profile.

    ncu --kernel-name regex:_scan_ --launch-skip 2 --launch-count 1 \\
        --section SchedulerStats --section WarpStateStats --section Occupancy \\
        python benchmarks/diagnostics/ncu_scan.py [KEY=VALUE+KEY=VALUE...] [BxDxL[xcl]]

The first argument overrides the kernel's config (see selective_scan_triton), e.g. fast_unpack=1+pair_states=1
(no commas: run_gpu.sh splits its arguments on them; '' for the shape's own choice). The second is the shape,
batch x d_inner x L (d_state 16), default 8x1536x4096 contiguous; a trailing "xcl" gives channel-last views as
a Mamba block passes them (1x5120x793xcl: Cobra's LM prefill, the batch-1 dispatch).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from benchmarks.bench_scan import scan_inputs  # noqa: E402
from effprof.ops.selective_scan_triton import selective_scan_triton  # noqa: E402

USAGE = ("ncu_scan.py: usage [KEY=VALUE+KEY=VALUE] [BxDxL[xcl]] (e.g. fast_unpack=1+pair_states=1 1x5120x793xcl), "
         "on a CUDA device")
items = [item.split("=") for item in sys.argv[1].split("+") if item] if len(sys.argv) > 1 else []
shape = sys.argv[2].split("x") if len(sys.argv) > 2 else ["8", "1536", "4096"]
channel_last = shape[-1] == "cl"
shape = shape[:-1] if channel_last else shape
if (any(len(item) != 2 for item in items) or len(shape) != 3 or not all(s.isdigit() and int(s) > 0 for s in shape)
        or not torch.cuda.is_available()):
    sys.exit(USAGE)
try:
    config = {key: json.loads(value) for key, value in items}
except json.JSONDecodeError as exc:
    sys.exit(f"ncu_scan.py: a value is not a number or true/false: {exc.doc!r}")
batch, d_inner, L = map(int, shape)
inputs = scan_inputs(batch, d_inner, L, 16, torch.bfloat16, torch.device("cuda"))
if channel_last:  # the same values in a Mamba block's layout: u and delta (batch, L, ·) buffers, z the second
    # half of xz; B and C stay time-contiguous (the block copies them so at batch 1)
    rows = lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    xz = torch.cat([inputs["u"], inputs["z"]], dim=1).transpose(1, 2).contiguous()
    inputs.update(u=rows(inputs["u"]), delta=rows(inputs["delta"]), z=xz.transpose(1, 2)[:, d_inner:])
for _ in range(4):
    selective_scan_triton(**inputs, delta_softplus=True, config=config)
torch.cuda.synchronize()
print("config", config or "default", "shape", "x".join(shape), "channel-last" if channel_last else "contiguous")
