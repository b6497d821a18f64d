"""LLaVA-1.5-7B decode per token (issue 11's target: <= 5 ms at a 4k context under graphs on an H200): the
`llava --mode decode` rows of each `--decode-impl` (transformers, fused, triton) under CUDA graphs and under
compile+graphs at 4k, and the fused steps under graphs at 1k and 16k; then a check that the fused step decodes as
transformers does on this device.

    python3 benchmarks/bench_llava_decode.py --out DIR [--sections micro,check,rows,kernels] [--impls a,b] [--smoke]

Writes DIR/bench_llava_decode.json (meta, check, rows, kernels) and DIR/bench_llava_decode.md (the table),
and prints the table last. `--smoke` runs the same code on CPU with the tiny preset (eager instead of
graphs, no compile). Sections: `micro` (each GEMV of a 7B layer and the attention at 4k / 16k alone, torch
vs effprof's Triton kernels, µs under a CUDA graph and TB/s), `check` (greedy tokens, tiny fp32: transformers eager = fused eager = fused
graphs; LLaVA-1.5-7B bf16, one step at 1k: the logits' max difference and the argmax), `rows` (the timed
rows), `kernels` (the triton step's kernels at 4k, eager, benchmarks/diagnostics/diag_llava_decode.py).
About 4 minutes on an H200 for all four sections (three compiles of the 7B decode step, ~30 s each).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import run_meta  # noqa: E402

# (context, decode_impl, compile) rows, in order; every row runs under graphs on CUDA (three compiles, ~30 s each)
ROWS = [(4096, "transformers", False), (4096, "fused", False), (4096, "triton", False),
        (4096, "transformers", True), (4096, "fused", True), (4096, "triton", True),
        (1024, "fused", False), (1024, "triton", False), (16384, "fused", False), (16384, "triton", False)]
SMOKE_ROWS = [(64, "transformers", False), (64, "fused", False), (16, "fused", False), (16, "triton", False)]


def rows(smoke: bool, impls: tuple[str, ...] = ("transformers", "fused", "triton")) -> list[dict]:
    from effprof.ops.selective_scan import available_backends
    from effprof.runner import Config, RunOptions, free_memory, measure

    out = []
    for context, impl, compiled in SMOKE_ROWS if smoke else ROWS:
        if impl not in impls or (smoke and impl == "triton" and "triton" not in available_backends(torch.device("cpu"))):
            continue  # the triton row runs on CPU only under TRITON_INTERPRET=1
        opts = RunOptions(device="cpu" if smoke else "cuda", dtype="fp32" if smoke else "bf16", graphs=not smoke,
                          compile=compiled, min_time=0.02 if smoke else 0.5, warmup=0 if smoke else 0.2)
        params = {"preset": "tiny" if smoke else "llava-1.5-7b", "mode": "decode", "context": context,
                  "decode_impl": impl}
        r = measure(Config("llava", params, opts))
        free_memory()
        out.append({"context": context, "decode_impl": r.get("decode_impl", impl), "exec_mode": r.get("exec_mode"),
                    "ms_per_token": r.get("latency_ms_median"), "cv": r.get("latency_cv"),
                    "estimate_ms": r.get("estimate_ms"), "measured_over_estimate": r.get("measured_over_estimate"),
                    "kv_cache_mib": r.get("kv_cache_mib"), "compile_s": r.get("compile_s"),
                    "peak_mem_mib": r.get("peak_mem_mib"), "status": r.get("status"), "error": r.get("error")})
        print(json.dumps(out[-1], default=str), flush=True)
    return out


def _generate(impl: str, mode: str, device: torch.device, new_tokens: int = 16) -> list:
    from effprof.core.registry import BuildContext, get_component

    torch.manual_seed(0)
    component = get_component("llava")
    values = component.resolve({"preset": "tiny", "mode": "generate", "new_tokens": new_tokens, "prompt_tokens": 4,
                                "decode_impl": impl})
    built = component.build(values, BuildContext(device, torch.float32, 0, mode))
    torch.manual_seed(1)
    inputs = built.make_inputs(2)
    with torch.inference_mode():
        built.call(inputs)  # a graph is captured on the first call
        return built.call(inputs).tolist()


def check(smoke: bool) -> dict:
    """Greedy tokens of the tiny LLaVA (fp32) per implementation and mode; the 7B's logits of one step."""
    device = torch.device("cpu" if smoke else "cuda")
    runs = [("transformers", "eager"), ("fused", "eager")] + ([] if smoke else [("fused", "graphs"),
                                                                               ("triton", "eager"), ("triton", "graphs")])
    tokens = {f"{impl}/{mode}": _generate(impl, mode, device) for impl, mode in runs}
    reference = tokens["transformers/eager"]
    result = {"tiny_fp32_tokens_equal": {k: v == reference for k, v in tokens.items()}}
    from effprof.models.llava import PRESETS, LlavaPipeline, build_llava

    preset, dtype, context = ("tiny", torch.float32, 32) if smoke else ("llava-1.5-7b", torch.bfloat16, 1024)
    torch.manual_seed(0)
    pipe = LlavaPipeline(build_llava(PRESETS[preset], device, dtype)).eval()
    ids = torch.randint(0, 32000, (1, context + 1), device=device)
    logits = {}
    with torch.inference_mode():
        for impl in ("transformers", "fused") if smoke else ("transformers", "fused", "triton"):
            pipe.use_decode_impl(impl)
            kv = pipe.new_cache(context + 1, 1)
            pipe.prefill(pipe.lm.get_input_embeddings()(ids[:, :-1]), kv)
            logits[impl] = pipe.decode(ids[:, -1:], kv, torch.full((1, 1), context, device=device), full=True).float()
    reference = logits.pop("transformers")
    result[f"{preset}_{str(dtype)[6:]}_step_at_{context}"] = {"max_abs_logit": reference.abs().max().item(), **{
        impl: {"max_abs_logit_diff": (got - reference).abs().max().item(),
               "argmax_equal": bool(torch.equal(got.argmax(-1), reference.argmax(-1)))} for impl, got in logits.items()}}
    del pipe
    return result


def kernels(smoke: bool) -> dict:
    """Kernels of one triton decode step at 4k, eager (count per step, device time; call 1 of 2026-12-01 has the
    transformers step's)."""
    from benchmarks.diagnostics.diag_llava_decode import kernel_table
    from effprof.runner import Config, RunOptions, build, free_memory

    device = "cpu" if smoke else "cuda"
    out = {}
    for impl in ("fused",) if smoke else ("triton",):
        params = {"mode": "decode", "context": 64 if smoke else 4096, "preset": "tiny" if smoke else "llava-1.5-7b",
                  "decode_impl": impl}
        built, _, _ = build(Config("llava", params, RunOptions(device=device, dtype="fp32" if smoke else "bf16")))
        inputs = built.make_inputs(1)
        with torch.no_grad():
            out[impl] = kernel_table(lambda: built.call(inputs))
        del built, inputs
        free_memory()
    return out


def _time_us(fn, smoke: bool) -> float:
    """Median µs of fn() replayed in a CUDA graph (triton.testing.do_bench_cudagraph: no launch gaps, as in
    the graphed decode step); on CPU (smoke) perf_counter over 3 calls."""
    fn()  # autotuning and compilation happen here, outside the graph
    if smoke:
        import time

        start = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - start) / 3 * 1e6
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def micro(smoke: bool) -> dict:
    """LLaVA-1.5-7B's decode GEMVs (batch 1) and its attention at 4k / 16k, each alone: torch's path (cuBLAS
    F.linear with the surrounding ops; SDPA) against effprof's Triton kernels, µs and TB/s of the bytes read."""
    import torch.nn.functional as F

    from effprof.ops.decode_attention import decode_attention
    from effprof.ops.gemv import gemv
    from effprof.ops.selective_scan import available_backends

    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    width, ffn = (64, 128) if smoke else (4096, 11008)
    backends = ["ref"] + (["triton"] if "triton" in available_backends(device) else [])
    shapes = {"qkv+norm": (3 * width, width, True, False, False), "o+residual": (width, width, False, False, True),
              "gate_up+norm+silu*up": (2 * ffn, width, True, True, False), "down+residual": (width, ffn, False, False, True),
              "lm_head (F.linear)": (32064, width, False, False, False)}
    out: dict = {"gemv": {}, "attention": {}}
    torch.manual_seed(0)
    for name, (n, k, norm, silu, res) in shapes.items():
        w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
        x = torch.randn(1, 1, k, device=device, dtype=dtype)
        kw = dict(norm_weight=torch.ones(k, device=device, dtype=dtype) if norm else None, eps=1e-5, silu_mul=silu,
                  residual=torch.randn(1, 1, n // 2 if silu else n, device=device, dtype=dtype) if res else None)
        row = {"weight_mib": w.numel() * w.element_size() / 2**20,
               "linear_only_us": _time_us(lambda: F.linear(x, w), smoke)}
        for backend in backends if not name.startswith("lm_head") else []:
            row[f"{backend}_us"] = _time_us(lambda: gemv(x, w, backend=backend, **kw), smoke)
        for key in [key for key in row if key.endswith("_us")]:
            row[key.replace("_us", "_tb_per_s")] = w.numel() * w.element_size() / (row[key] * 1e-6) / 1e12
        out["gemv"][name] = row
        print(name, json.dumps(row), flush=True)
        del w
    heads, dim = (4, 16) if smoke else (32, 128)
    for slots in (65, 257) if smoke else (4097, 16385):
        q = torch.randn(1, heads, 1, dim, device=device, dtype=dtype)
        keys, values = (torch.randn(1, heads, slots, dim, device=device, dtype=dtype) for _ in range(2))
        position = torch.full((1, 1), slots - 1, device=device)
        row = {"kv_mib": 2 * keys.numel() * keys.element_size() / 2**20,
               "sdpa_unmasked_us": _time_us(lambda: F.scaled_dot_product_attention(q, keys, values, scale=dim**-0.5),
                                            smoke)}
        for backend in backends:
            row[f"{backend}_us"] = _time_us(lambda: decode_attention(q, keys, values, position, dim**-0.5, backend),
                                            smoke)
        for key in [key for key in row if key.endswith("_us")]:
            row[key.replace("_us", "_tb_per_s")] = row["kv_mib"] * 2**20 / (row[key] * 1e-6) / 1e12
        out["attention"][slots] = row
        print("attention", slots, json.dumps(row), flush=True)
        del keys, values
    return out


def table(doc: dict) -> str:
    lines = ["| context | decode impl | mode | ms / token | CV | estimate ms | measured / estimate | KV cache MiB | "
             "compile s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def cell(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else ("-" if v is None else str(v))

    micro_rows = [(name, r.get("weight_mib"), r) for name, r in doc.get("micro", {}).get("gemv", {}).items()]
    micro_rows += [(f"attention, {slots} slots", r.get("kv_mib"), r)
                   for slots, r in doc.get("micro", {}).get("attention", {}).items()]
    if micro_rows:
        lines[:0] = ["| kernel (batch 1) | MiB read | F.linear / SDPA alone µs | torch path µs | triton µs | "
                     "torch path TB/s | triton TB/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for i, (name, mib, r) in enumerate(micro_rows):
            alone = r.get("linear_only_us", r.get("sdpa_unmasked_us"))
            lines.insert(2 + i, f"| {name} | {cell(mib, '.1f')} | {cell(alone, '.1f')} | {cell(r.get('ref_us'), '.1f')} | "
                         f"{cell(r.get('triton_us'), '.1f')} | {cell(r.get('ref_tb_per_s'), '.2f')} | "
                         f"{cell(r.get('triton_tb_per_s'), '.2f')} |")
        lines.insert(2 + len(micro_rows), "")
    for r in doc.get("rows", []):
        lines.append(f"| {r['context']} | {r['decode_impl']} | {r['exec_mode']} | {cell(r['ms_per_token'], '.3f')} | "
                     f"{cell(r['cv'], '.3f')} | {cell(r['estimate_ms'], '.3f')} | "
                     f"{cell(r['measured_over_estimate'], '.2f')} | {cell(r['kv_cache_mib'], '.1f')} | "
                     f"{cell(r['compile_s'], '.1f')} |" + (f" {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/bench_llava_decode")
    parser.add_argument("--sections", default="micro,check,rows,kernels")
    parser.add_argument("--impls", default="transformers,fused,triton", help="the rows' --decode-impl values")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("bench_llava_decode.py needs a CUDA device (or --smoke)", file=sys.stderr)
        return 2
    sections = {"micro": micro, "check": check, "rows": rows, "kernels": kernels}
    unknown = [s for s in args.sections.split(",") if s not in sections]
    if unknown:
        print(f"bench_llava_decode.py: unknown section {', '.join(unknown)} (known: {', '.join(sections)})",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict = {"meta": run_meta(command=" ".join(sys.argv))}
    for name in args.sections.split(","):
        doc[name] = (rows(args.smoke, tuple(args.impls.split(","))) if name == "rows"
                     else sections[name](args.smoke))
        (out / "bench_llava_decode.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
        if name != "rows":
            print(f"{name}: {json.dumps(doc[name], default=str)}", flush=True)
    text = table(doc)
    (out / "bench_llava_decode.md").write_text(f"{doc['meta']}\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
