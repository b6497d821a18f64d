"""What a failed CUDA-graph capture leaves behind, raw and through effprof.measure.modes, and whether
`modes.recover` puts it back. Prints one JSON object (GPU only)."""
import json
import sys

import torch

from effprof.measure import modes


def attempt(fn):
    try:
        fn()
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def bad(inputs):
    y = inputs[0] * 2
    if bool((y > 0).any()):
        y = y + 1
    return y


dev = torch.device("cuda")
out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
x = torch.randn(1024, device=dev)
default = torch.cuda.current_stream(dev)
rng = lambda: torch.rand(4, device=dev).sum().item()  # noqa: E731

graph, side = torch.cuda.CUDAGraph(), torch.cuda.Stream(dev)  # 1. raw torch: nothing put back


def raw():
    with torch.cuda.graph(graph, stream=side):
        bad((x,))


out["raw_capture"] = attempt(raw)
out["raw_still_capturing"] = torch.cuda.is_current_stream_capturing()
out["raw_stream_is_default"] = torch.cuda.current_stream(dev) == default
out["raw_rng_after"] = attempt(rng)
out["recover_raw"] = modes.recover(dev)
out["rng_after_recover_raw"] = attempt(rng)
del graph

out["graphed_callable"] = attempt(lambda: modes.graphed_callable(bad, (x,), dev))  # 2. through effprof
out["stream_is_default_after"] = torch.cuda.current_stream(dev) == default
out["rng_before_recover"] = attempt(rng)
out["recover"] = modes.recover(dev)
out["rng_after_recover"] = attempt(rng)

lin = torch.nn.Linear(64, 64, device=dev)  # 3. a good capture afterwards replays what eager computes
inp = (torch.randn(8, 64, device=dev),)
replay = modes.graphed_callable(lambda i: torch.nn.functional.dropout(lin(i[0]), 0.0), inp, dev)
out["good_capture_after_matches_eager"] = bool(torch.allclose(replay(), lin(inp[0])))
json.dump(out, sys.stdout, indent=1)
print()
