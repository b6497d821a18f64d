"""Fine-tuning cost on the GPU: effprof's training-step mode (`--train`) on three workloads.

  (a) the `clip-lora` profile: CLIP ViT-B/16 dual encoder, batch 64, contrastive loss, AdamW: full fine-tuning,
      the two projections, LoRA r = 4..32 on the projections and on attention q/v; the q/v r=8 adapters at
      inference unmerged and merged; plus full fine-tuning with --grad-checkpointing (the memory/time trade);
  (b) training steps of the six LLaVA projectors (576 tokens, 1024 -> 4096, batch 16), and the MLP projector's
      step replayed as a CUDA graph (capturable AdamW);
  (c) one Mamba block (d_model 768, 1024 tokens, batch 4): its scan and conv run their fast forward, their
      backward recomputes the plain-PyTorch reference (effprof.ops.autograd).

Each row: trainable params, step time, samples/s, memory by part (weights / gradients / optimizer state /
activations, CUDA allocator deltas) and the step's peak, forward+backward GFLOPs. About 2 minutes on an H200.

    python3 benchmarks/bench_training.py --out DIR          # GPU: DIR/bench_training.json and .md
    python3 benchmarks/bench_training.py --smoke --out DIR  # tiny shapes on the CPU (checks the script runs)
    bash benchmarks/run_gpu.sh training                     # through the batched GPU runner (writes to $OUT)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import run_meta  # noqa: E402

from effprof.core.profiles import load_profile  # noqa: E402
from effprof.runner import Config, RunOptions, add_ratios, measure_many  # noqa: E402

PROJECTORS = [("linear", {}, "linear"), ("lowrank", {"rank": 256}, "lowrank-r256"), ("mlp", {}, "mlp2x_gelu"),
              ("gated", {}, "gated"), ("lora", {"rank": 8}, "lora-r8"), ("ldp", {}, "ldp (576->144)")]
COLUMNS = [("row", lambda r: r.get("label")), ("status", lambda r: r.get("status")),
           ("mode", lambda r: r.get("exec_mode")),
           ("trainable M", lambda r: _f(r.get("params_trainable"), 1e-6, 3)),
           ("step ms", lambda r: _f(r.get("latency_ms_median"))),
           ("samples/s", lambda r: _f(None if r.get("latency_ms_median") is None else r["batch"] / r["latency_ms_median"] * 1e3)),
           ("weights MiB", lambda r: _f(r.get("train_weights_mib"))), ("grads MiB", lambda r: _f(r.get("train_grads_mib"))),
           ("optim MiB", lambda r: _f(r.get("train_optimizer_mib"))),
           ("act MiB", lambda r: _f(r["train_activations_mib"] if r.get("train_activations_mib") is not None
                                    else r.get("train_saved_activations_mib"))),
           ("peak MiB", lambda r: _f(r.get("train_peak_mib"))),
           ("GFLOP fwd+bwd", lambda r: _f(r.get("gflops"))), ("TFLOP/s", lambda r: _f(r.get("tflops_per_s")))]


def _f(value, scale=1.0, digits=4):
    if value is None:
        return "-"
    value = value * scale
    return f"{value:,.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"


def workloads(smoke: bool, timing: dict) -> dict[str, list[Config]]:
    if smoke:
        base = RunOptions(device="cpu", dtype="fp32", batch=2, **timing)
        tiny = {"layers": 1, "img_size": 32, "seq_len": 8}
        clip = [Config("clip-dual", {**tiny, "adapt": a, **extra}, replace(base, train=train), label)
                for a, extra, train, label in [("full", {}, True, "full"), ("projections", {}, True, "projections"),
                                               ("lora", {"rank": 4}, True, "lora-proj r4"),
                                               ("lora", {"rank": 4, "lora_targets": "qv"}, True, "lora-qv r4"),
                                               ("lora", {"rank": 4, "lora_targets": "qv"}, False, "infer lora-qv r4"),
                                               ("lora", {"rank": 4, "lora_targets": "qv", "merged": True}, False,
                                                "infer lora-qv r4 merged")]]
        dims = {"tokens": 16, "in_dim": 32, "out_dim": 64}
        projectors = [Config(c, {**dims, **p}, replace(base, train=True), label) for c, p, label in PROJECTORS]
        mamba = [Config("mamba", {"d_model": 32, "seq_len": 64}, replace(base, train=True), "mamba block")]
        return {"clip_lora": clip, "projectors": projectors, "mamba": mamba}
    profile = load_profile("clip-lora", RunOptions(), timing)
    clip = profile.configs + [replace(profile.configs[0], label="full + grad ckpt",
                                      options=replace(profile.configs[0].options, grad_checkpointing=True))]
    train = RunOptions(batch=16, train=True, **timing)
    projectors = [Config(c, p, train, label) for c, p, label in PROJECTORS]
    projectors.append(Config("mlp", {}, replace(train, graphs=True), "mlp2x_gelu (graphs)"))
    block = {"d_model": 768, "seq_len": 1024}
    mamba = [Config("mamba", block, RunOptions(batch=4, train=True, **timing), "mamba block"),
             Config("mamba", block, RunOptions(batch=4, **timing), "mamba block (inference)")]
    return {"clip_lora": clip, "projectors": projectors, "mamba": mamba}


def markdown(sections: dict[str, list[dict]]) -> str:
    lines = []
    for name, records in sections.items():
        lines += [f"### {name}", "", "| " + " | ".join(h for h, _ in COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(str(fn(r)) for _, fn in COLUMNS) + " |" for r in records]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"),
                        help="folder for bench_training.json and .md (default: $OUT, else benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script runs)")
    args = parser.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench_training.py needs a CUDA device (or --smoke on the CPU)", file=sys.stderr)
        return 2
    timing = {"min_time": 0.02, "warmup": 0.0} if args.smoke else {"min_time": 0.3, "warmup": 0.1}
    start = time.perf_counter()
    sections = {}
    for name, configs in workloads(args.smoke, timing).items():
        records = measure_many(configs)
        add_ratios(records, 0)
        sections[name] = [{k: v for k, v in r.items() if k != "latency_samples_ms"} for r in records]
        print(f"{name}: {len(records)} rows, {time.perf_counter() - start:.0f} s so far", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(command=" ".join([sys.executable, *sys.argv]), smoke=args.smoke,
                    wall_s=time.perf_counter() - start)
    (out / "bench_training.json").write_text(json.dumps({"meta": meta, **sections}, indent=1, default=str) + "\n")
    table = markdown(sections)
    header = (f"bench_training on {meta['device']} ({meta['date_utc']}), torch {meta['torch']}, transformers "
              f"{meta['transformers']}, triton {meta['triton']}; memory by part: CUDA allocator deltas on the first "
              "step (CPU: live tensor sizes); FLOPs = 2×MAC, forward+backward\n\n")
    (out / "bench_training.md").write_text(header + table)
    print(f"wrote {out / 'bench_training.json'} and {out / 'bench_training.md'}")
    print(header + table)
    failed = [r["label"] for rs in sections.values() for r in rs if r.get("status") != "ok"]
    return 1 if failed and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
