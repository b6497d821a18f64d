"""CLIP vision tower and visual token pruning on the GPU: effprof against the plain-PyTorch anchor.

In one process:
  (a) the anchor of /work/shared/anchors/anchor_gpu.py: HF CLIPVisionModel ViT-B/16, SDPA, bf16, 224²,
      batch 256, CUDA events around each call, 10 warm-up calls, 50 timed, median; taken before and
      after effprof's rows to bracket clock drift; plus the anchor's own pruning loop at each keep;
  (b) effprof's measurement of `clip-vision` (same shape) through `effprof.runner.measure`, and the
      ratio effprof / anchor of the median latencies (target: within 5%);
  (c) effprof's `clip-vtp` profile (keep 1.0, 0.9, 0.7, 0.5, 0.25, batch 256) through
      `load_profile` + `measure_many` + `add_ratios`, printed with effprof's table.

Writes everything to $OUT/bench_clip.json (OUT defaults to /tmp). About a minute of GPU time.

    python benchmarks/bench_clip.py            # on the GPU machine
    python benchmarks/bench_clip.py --smoke    # tiny sizes on the CPU: checks that the script runs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import anchor_time_ms, run_meta, write_result  # noqa: E402

from effprof.core.profiles import load_profile  # noqa: E402
from effprof.report.table import print_records  # noqa: E402
from effprof.runner import Config, RunOptions, add_ratios, free_memory, measure, measure_many  # noqa: E402

KEEPS = (1.0, 0.9, 0.7, 0.5, 0.25)


def run_anchor(device: str, dtype: torch.dtype, image: int, batch: int, warmup: int, iters: int, with_vtp: bool) -> dict:
    """The anchor, written as in anchor_gpu.py (no effprof code)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=image, patch_size=16, attn_implementation="sdpa")
    torch.manual_seed(0)
    m = CLIPVisionModel(cfg).to(device, dtype).eval()
    enc = getattr(m, "vision_model", m)
    out = {}
    with torch.inference_mode():
        x = torch.randn(batch, 3, image, image, device=device, dtype=dtype)
        res = anchor_time_ms(lambda: m(pixel_values=x), device, warmup, iters)
        res["img_s"] = batch / res["ms"] * 1e3
        out["clip_vision"] = res
        if with_vtp:
            def vtp(keep):
                emb = enc.embeddings(x)
                cls, patches = emb[:, :1], emb[:, 1:]
                k = max(1, int(round(keep * patches.shape[1])))
                idx = patches.norm(dim=-1).topk(k, dim=1).indices
                kept = patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
                h = torch.cat([cls, patches.mean(1, keepdim=True), kept], 1)
                h = enc.pre_layrnorm(h)
                return enc.encoder(inputs_embeds=h)

            for keep in KEEPS:
                res = anchor_time_ms(lambda: vtp(keep), device, warmup, iters)
                res["img_s"] = batch / res["ms"] * 1e3
                out[f"vtp_{keep}"] = res
    del m, enc
    free_memory()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script runs)")
    args = parser.parse_args()

    if args.smoke:
        device, dtype_name, image, batch = "cpu", "fp32", 32, 2
        warmup, iters = 1, 3
        opts = RunOptions(batch=batch, dtype=dtype_name, device=device, warmup=0.0, min_time=0.05)
        extra_params = {"img_size": image}
    else:
        if not torch.cuda.is_available():
            print("bench_clip: no CUDA device; use --smoke to check the script on a CPU", file=sys.stderr)
            return 2
        device, dtype_name, image, batch = "cuda", "bf16", 224, 256
        warmup, iters = 10, 50
        opts = RunOptions(batch=batch, dtype=dtype_name, device=device, warmup=0.5, min_time=1.5)
        extra_params = {}
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    import transformers

    print(f"device {name}; torch {torch.__version__}; transformers {transformers.__version__}", flush=True)

    started = time.perf_counter()
    anchor_before = run_anchor(device, dtype, image, batch, warmup, iters, with_vtp=True)
    print("anchor (before):", json.dumps(anchor_before["clip_vision"]), flush=True)

    vision = measure(Config("clip-vision", {"preset": "vit-b-16", **extra_params}, opts, "clip-vision"))
    free_memory()

    anchor_after = run_anchor(device, dtype, image, batch, warmup, iters, with_vtp=False)
    print("anchor (after): ", json.dumps(anchor_after["clip_vision"]), flush=True)

    profile = load_profile("clip-vtp", RunOptions(), {f: getattr(opts, f) for f in
                                                      ("batch", "dtype", "device", "warmup", "min_time")})
    configs = [replace(c, params={**c.params, **extra_params}) for c in profile.configs]
    vtp_records = measure_many(configs)
    add_ratios(vtp_records, profile.baseline)

    anchor_ms = statistics.median([anchor_before["clip_vision"]["ms"], anchor_after["clip_vision"]["ms"]])
    ratio = vision["latency_ms_median"] / anchor_ms
    print_records([vision], title=f"effprof clip-vision vit-b-16, batch {batch}, {dtype_name}")
    print(f"clip-vision median latency: effprof {vision['latency_ms_median']:.3f} ms, anchor "
          f"{anchor_before['clip_vision']['ms']:.3f} / {anchor_after['clip_vision']['ms']:.3f} ms (before / after); "
          f"effprof / anchor = {ratio:.3f} ({'within' if abs(ratio - 1) <= 0.05 else 'OUTSIDE'} 5%)")
    print_records(vtp_records, title=profile.title)
    print("keep   effprof img/s   anchor img/s   effprof/anchor throughput")
    for keep, record in zip(KEEPS, vtp_records):
        anchor = anchor_before[f"vtp_{keep}"]["img_s"]
        ours = record.get("throughput_per_s")
        shown = "-" if ours is None else f"{ours:14,.0f}   {anchor:12,.0f}   {ours / anchor:6.3f}"
        print(f"{keep:<6} {shown}")
    wall = time.perf_counter() - started
    print(f"wall time {wall:.1f} s")

    doc = run_meta(
        smoke=args.smoke, batch=batch, dtype=dtype_name, image_size=image, wall_s=wall,
        anchor_before=anchor_before, anchor_after=anchor_after,
        anchor_note="anchor_gpu.py method: per-call CUDA events, sync after each call, 10 warm-up, 50 timed; "
                    "its pruning rounds keep·N to nearest and skips post_layernorm",
        clip_vision=vision, effprof_over_anchor_latency=ratio, clip_vtp=vtp_records,
    )
    write_result("bench_clip", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
