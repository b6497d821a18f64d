"""Whole VLMs on the GPU: effprof's LLaVA-1.5-7B prefill against the same transformers model timed by
`triton.testing.do_bench` in the same process, then the two VLM profiles (llava-stages, cobra-vs-llava).

    python3 benchmarks/bench_vlm.py --out DIR [--sections hf,stages,cobra] [--smoke]

Writes DIR/bench_vlm.json (meta, the comparison) and DIR/llava_stages.json, DIR/cobra_vs_llava.json (effprof
records), and prints a short table last. `--smoke` runs the same code on CPU with the tiny presets.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import run_meta  # noqa: E402


def hf_comparison(batch: int, smoke: bool) -> dict:
    """effprof's `llava --mode prefill` (eager, its own timer) vs transformers' forward of the same
    architecture (image + prompt -> logits of the last token, KV cache written) under do_bench."""
    from effprof.models.llava import IMAGE_TOKEN_ID, PRESETS, build_llava
    from effprof.runner import Config, RunOptions, free_memory, measure

    preset = "tiny" if smoke else "llava-1.5-7b"
    device = "cpu" if smoke else "cuda"
    opts = RunOptions(batch=batch, device=device, dtype="fp32" if smoke else "bf16", min_time=0.05 if smoke else 1.0,
                      warmup=0 if smoke else 0.2)
    record = measure(Config("llava", {"preset": preset, "mode": "prefill"}, opts))
    free_memory()
    p = PRESETS[preset]
    n_img = (p.image_size // p.patch_size) ** 2
    model = build_llava(p, torch.device(device), torch.float32 if smoke else torch.bfloat16)
    pixels = torch.randn(batch, 3, p.image_size, p.image_size, device=device, dtype=model.dtype)
    ids = torch.cat([torch.full((batch, n_img), IMAGE_TOKEN_ID, device=device),
                     torch.randint(0, 32000, (batch, 64), device=device)], dim=1)

    def hf_call():
        return model(input_ids=ids, pixel_values=pixels, logits_to_keep=1, use_cache=True).logits

    with torch.inference_mode():
        if smoke:
            t0 = time.perf_counter()
            for _ in range(3):
                hf_call()
            hf_ms = (time.perf_counter() - t0) / 3 * 1e3
        else:
            from triton.testing import do_bench

            hf_ms = do_bench(hf_call, warmup=200, rep=1000, return_mode="median")
    return {"batch": batch, "preset": preset, "effprof_ms": record["latency_ms_median"], "hf_do_bench_ms": hf_ms,
            "effprof_over_hf": record["latency_ms_median"] / hf_ms, "effprof_cv": record["latency_cv"],
            "stages": {k: record.get(k) for k in record if k.startswith("stage_") and k.endswith("_ms")},
            "gflops": record.get("gflops"), "tflops_per_s": record.get("tflops_per_s"),
            "verdict": record.get("verdict"), "measured_over_estimate": record.get("measured_over_estimate")}


def graphs_check(smoke: bool) -> dict:
    """Greedy tokens of a graph-replayed decode loop equal the eager loop's (the same kernels replayed), for
    the tiny LLaVA and Cobra on this device; and the eager loop equals transformers' generate (LLaVA)."""
    from effprof.core.registry import BuildContext, get_component

    device = torch.device("cpu" if smoke else "cuda")
    modes = ("eager",) if smoke else ("eager", "graphs")
    result = {}
    for name in ("llava", "cobra"):
        tokens = {}
        for mode in modes:
            torch.manual_seed(0)
            component = get_component(name)
            values = component.resolve({"preset": "tiny", "mode": "generate", "new_tokens": 16, "prompt_tokens": 4})
            built = component.build(values, BuildContext(device, torch.float32, 0, mode))
            torch.manual_seed(1)
            inputs = built.make_inputs(2)
            with torch.inference_mode():
                built.call(inputs)  # the first call captures the graph
                tokens[mode] = built.call(inputs).tolist()
        result[name] = {"modes": list(modes), "equal": all(t == tokens["eager"] for t in tokens.values())}
    return result


def profile(name: str, out: Path, smoke: bool) -> list[dict]:
    from effprof.cli.main import main
    from effprof.report.files import read_json

    path = out / f"{name.replace('-', '_')}.json"
    extra = ["--device", "cpu", "--no-graphs", "--min-time", "0.02", "--warmup", "0"] if smoke else []
    if smoke:  # the profiles' presets are GPU-sized: count them on the meta device instead of running them
        extra = ["--device", "meta", "--no-graphs"]
    code = main(["compare", name, "--json", str(path), *extra])
    print(f"compare {name}: exit {code}")
    return read_json(path) if path.exists() else []


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/bench_vlm")
    parser.add_argument("--sections", default="check,hf,stages,cobra")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("bench_vlm.py needs a CUDA device (or --smoke)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    doc: dict = {"meta": run_meta(command=" ".join(sys.argv))}
    if "check" in sections:
        doc["graphs_check"] = graphs_check(args.smoke)
        print(f"graphs check: {doc['graphs_check']}")
    if "hf" in sections:
        doc["hf_comparison"] = hf_comparison(2 if args.smoke else args.batch, args.smoke)
        (out / "bench_vlm.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    rows = []
    if "stages" in sections:
        rows += profile("llava-stages", out, args.smoke)
    if "cobra" in sections:
        rows += profile("cobra-vs-llava", out, args.smoke)
    (out / "bench_vlm.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if "hf_comparison" in doc:
        c = doc["hf_comparison"]
        print(f"prefill {c['preset']} batch {c['batch']}: effprof {c['effprof_ms']:.3f} ms, transformers do_bench "
              f"{c['hf_do_bench_ms']:.3f} ms, ratio {c['effprof_over_hf']:.3f}")
    keys = ("latency_ms_median", "stage_vision_ms", "stage_project_ms", "stage_prefill_ms", "ttft_ms", "tpot_ms_mean",
            "tpot_ms_p90", "gen_tokens_per_s", "kv_cache_mib", "state_mib", "peak_mem_mib", "measured_over_estimate")
    print("| row | " + " | ".join(keys) + " |")
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        print(f"| {r.get('label')} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
