"""Visual token reducers measured end to end (issue 12): the three built-in profiles on the GPU, the
LLaVA-PruMerge cost table's analytic estimate beside its measurement, and a short analysis.

  token-reduction  LLaVA-1.5-7B, batch 1, 576 image + 64 prompt tokens: every reducer at its published
                   default against no reduction (TTFT split by stage, tokens, prefill FLOPs, memory, fidelity)
  prumerge-table   7B and 13B with and without PruMerge, bf16/fp16, eager and graphs (compile rows with
                   --with-compile: they compile a 7B model twice), beside `effprof estimate`'s bound
                   (bf16, fp16, int8, int4) for the same token counts
  tome-vit         ToMe at r = 4, 8, 16 in ViT-B/16 (batch 64) and in LLaVA's tower (batch 8)

Writes DIR/bench_reducers.json (records, estimates, analysis, device, versions, command line) and
DIR/bench_reducers.md, and prints the markdown last. Expected on an H200: at most ~200 s (`--budget-s
190`, split 0.45 / 0.4 / 0.15 over the profiles in row order; a row that would start past its profile's
share is marked `skipped`; each LLaVA row builds its random-weight model, ~5-10 s).

    python3 benchmarks/bench_reducers.py --out DIR            # on the GPU machine
    python3 benchmarks/bench_reducers.py --out DIR --smoke    # tiny shapes on the CPU: checks the script
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from benchmarks.common import run_meta  # noqa: E402
from effprof.core.errors import EffprofError  # noqa: E402
from effprof.core.profiles import find_profile, load_profile  # noqa: E402
from effprof.runner import Config, RunOptions, add_ratios, measure_many  # noqa: E402

PROFILES = ("token-reduction", "prumerge-table", "tome-vit")
BUDGET_SHARE = {"token-reduction": 0.45, "prumerge-table": 0.4, "tome-vit": 0.15}   # of --budget-s
WEIGHTS = ("bf16", "fp16", "int8", "int4")


def smoke_params(component: str, params: dict) -> dict:
    """The same row on tiny shapes: the `tiny` LLaVA (2-layer tower and LM, 16 image tokens), 32 px towers."""
    p = dict(params)
    if component == "llava":
        p.update(preset="tiny", prompt_tokens=8)
        reducer = p.get("reducer")
        if reducer == "fastv":
            p["fastv_k"] = 1
        elif reducer == "pyramiddrop":
            p["pdrop_layers"] = "1"
        elif reducer == "sparsevlm":
            p["sparse_layers"] = "0"
        elif reducer == "visionzip":
            p.update(dominant=min(int(p.get("dominant", 54)), 5), contextual=min(int(p.get("contextual", 10)), 3))
        elif reducer == "tome":
            p["r"] = 2
    else:
        p["img_size"] = 28 if p.get("preset") == "vit-l-14-336" else 32
        if "r" in p:
            p["r"] = 1
    return p


def profile_configs(name: str, smoke: bool, with_compile: bool) -> tuple[list[Config], int, str]:
    """(configs, baseline index, title); in smoke mode every row on tiny shapes on the CPU, eager."""
    if not smoke:
        profile = load_profile(name, RunOptions(), {})
        configs = [c for c in profile.configs if with_compile or not c.options.compile]
        base = profile.configs[profile.baseline].label
        return configs, [c.label for c in configs].index(base), profile.title
    doc = yaml.safe_load(find_profile(name).read_text())
    configs = []
    for row in doc["rows"]:
        opts = {**(doc.get("options") or {}), **(row.get("options") or {})}
        if opts.get("compile") and not with_compile:
            continue
        opts.update(device="cpu", dtype="fp32", batch=2, min_time=0.02, warmup=0.0, graphs=False, compile=False)
        configs.append(Config(row["component"], smoke_params(row["component"], row.get("params") or {}),
                              RunOptions(**opts), row.get("label", "")))
    labels = [c.label for c in configs]
    return configs, labels.index(doc["baseline"]), doc["title"] + " [smoke: tiny shapes, cpu]"


def measure_within(configs: list[Config], budget_s: float, name: str) -> list[dict]:
    """Measure rows in order until `budget_s` seconds have passed; later rows are marked `skipped`."""
    from dataclasses import replace

    records, start = [], time.time()
    for config in configs:
        if time.time() - start > budget_s:
            records.append({"label": config.label, "component": config.component, "status": "skipped",
                            "error": f"time budget of {budget_s:.0f} s for {name} spent"})
            continue
        if config.options.device != "cpu":   # the bench's timing budget: 0.3 s of timed calls per row
            config = replace(config, options=replace(config.options, min_time=0.3, warmup=0.1))
        try:
            record = measure_many([config])[0]
        except EffprofError as exc:  # e.g. a graph capture that a host read-back breaks: the row says so
            record = {"label": config.label, "component": config.component, "status": "refused",
                      "error": str(exc).splitlines()[0][:300], "exec_mode": "graphs" if config.options.graphs else
                      "compile" if config.options.compile else "eager"}
        print(f"  {name}: {record['label']}: {record.get('status')} {record.get('latency_ms_median') or 0:.3f} ms "
              f"({record.get('wall_s', 0):.1f} s)", flush=True)
        records.append(record)
    return records


def sequence_tokens(record: dict) -> int | None:
    """Tokens the LM prefills in a llava row: image tokens after the vision-side reducer + prompt tokens."""
    if record.get("status") != "ok":
        return None
    image = record.get("image_tokens_out", record.get("image_tokens"))
    prompt = record.get("prompt_tokens", record.get("param_prompt_tokens"))
    return None if image is None or prompt is None else int(image) + int(prompt)


def estimate_rows(records: list[dict], smoke: bool) -> list[dict]:
    """`effprof estimate`'s prefill bound for the measured rows' token counts (LLM-Viewer's method)."""
    from effprof.components.vlm import llama_shape
    from effprof.measure.estimate import estimate
    from effprof.models.llava import PRESETS, llava_config
    from effprof.studies.inspection import estimate_ceilings

    ceilings = estimate_ceilings(None if not smoke else "H200", "auto")
    if ceilings is None:
        ceilings = estimate_ceilings("H200")
    rows = []
    for r in records:
        tokens = sequence_tokens(r)
        if tokens is None or r.get("exec_mode", "eager") != "eager" or r.get("dtype") not in ("bf16", "fp16", "fp32"):
            continue
        shape = llama_shape(llava_config(PRESETS[r["param_preset"]]).text_config)
        peak = ceilings.matmul_tflops.get("bf16") or ceilings.matmul_tflops.get("fp16")
        for weight in WEIGHTS:
            est = estimate(shape, "prefill", int(r["batch"]), tokens, weight)
            rows.append({"label": r["label"], "weights": weight, "tokens": tokens,
                         "estimate_gflops": est.flops / 1e9, "estimate_ms": est.bound_ms(peak, ceilings.bandwidth_gb_per_s),
                         "measured_prefill_gflops": r.get("stage_prefill_gflops"),
                         "measured_prefill_ms": r.get("stage_prefill_ms"), "measured_ttft_ms": r.get("latency_ms_median"),
                         "ceilings": getattr(ceilings, "source", "?")})
    return rows


def _f(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x)


def records_table(records: list[dict]) -> str:
    cols = [("row", "label"), ("status", "status"), ("TTFT / latency ms", "latency_ms_median"), ("speedup", "speedup"),
            ("GFLOP (2×MAC)", "gflops"), ("GFLOP ratio", "gflops_ratio"), ("tokens in→out", None),
            ("LM image tokens per layer", "lm_image_tokens_per_layer"), ("vision ms", "stage_vision_ms"),
            ("reduce ms", "stage_reduce_ms"), ("project ms", "stage_project_ms"), ("prefill ms", "stage_prefill_ms"),
            ("peak MiB", "peak_mem_mib"), ("fidelity cos", "fidelity_cos"), ("next-token agree", "next_token_agreement")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        cells = []
        for _, key in cols:
            if key is None:
                t_in = r.get("image_tokens_in", r.get("tokens_in"))
                t_out = r.get("image_tokens_out", r.get("tokens_out"))
                cells.append(f"{_f(t_in)}→{_f(t_out)}" if t_in is not None else "-")
            else:
                cells.append(_f(r.get(key)) if key != "status" or r.get(key) == "ok" else f"{r.get(key)}: {r.get('error', '')[:60]}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def estimate_table(rows: list[dict]) -> str:
    lines = ["| row | weights | LM tokens | estimate GFLOP | measured prefill GFLOP | estimate bound ms | "
             "measured prefill ms | measured / estimate |", "|---|---|---|---|---|---|---|---|"]
    for e in rows:
        ratio = (e["measured_prefill_ms"] / e["estimate_ms"]) if e["measured_prefill_ms"] and e["estimate_ms"] else None
        lines.append(f"| {e['label']} | {e['weights']} | {e['tokens']} | {_f(e['estimate_gflops'])} | "
                     f"{_f(e['measured_prefill_gflops'])} | {_f(e['estimate_ms'])} | {_f(e['measured_prefill_ms'])} | "
                     f"{_f(ratio)} |")
    return "\n".join(lines)


def analysis(token_records: list[dict], estimates: list[dict], tome_records: list[dict]) -> list[str]:
    """Which reductions pay off in measured TTFT and which only in FLOPs; estimate against measurement."""
    notes = []
    for r in token_records:
        if r.get("status") != "ok" or r.get("speedup") is None or r["label"] == "none":
            continue
        speed, flops = r["speedup"], r.get("gflops_ratio") or 1.0
        if speed >= 1.10:
            verdict = "pays off in measured TTFT"
        elif speed < 0.95:
            verdict = "costs time" + (" although it saves FLOPs" if flops <= 0.8 else "")
        elif flops <= 0.8:
            verdict = "saves FLOPs only (TTFT within 5-10%)"
        else:
            verdict = "neutral"
        reduce_ms = r.get("stage_reduce_ms")
        extra = f"; its reduce stage takes {reduce_ms:.3g} ms" if reduce_ms else ""
        notes.append(f"{r['label']}: {speed:.2f}x TTFT for {flops:.2f}x the FLOPs: {verdict}{extra}.")
    bf16 = [e for e in estimates if e["weights"] == "bf16" and e["measured_prefill_ms"]]
    if bf16:
        ratios = [e["measured_prefill_ms"] / e["estimate_ms"] for e in bf16]
        notes.append(f"Estimate vs measurement (bf16 eager prefill stage): measured is {min(ratios):.2f}x to "
                     f"{max(ratios):.2f}x the analytic bound ({len(bf16)} rows); the bound models neither launch/host "
                     "time nor kernel efficiency, which dominate short (reduced) prompts at batch 1.")
    for group in ("vit-b-16", "llava-tower"):
        rows = [r for r in tome_records if r.get("status") == "ok" and r["label"].startswith(group)]
        base = next((r for r in rows if r["label"] == group), None)
        if base:
            parts = [f"{r['label'].split()[-1]} {base['latency_ms_median'] / r['latency_ms_median']:.2f}x"
                     for r in rows if r is not base]
            notes.append(f"ToMe in {group}: throughput vs r=0: " + ", ".join(parts) + ".")
    return notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/effprof-bench"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script)")
    parser.add_argument("--with-compile", action="store_true", help="also the prumerge-table compile rows")
    parser.add_argument("--only", default=",".join(PROFILES), help="comma-separated profiles to run")
    parser.add_argument("--budget-s", type=float, default=190.0, help="seconds for all rows (0.45 / 0.4 / 0.15 "
                        "of it per profile); rows past a profile's share are marked skipped")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if not args.smoke:  # the estimate and the roofline use this GPU's own calibration, never the datasheet
        import torch

        from effprof.measure.calibrate import calibrate

        if torch.cuda.is_available():
            calibrate(torch.device("cuda"))   # measures once per machine (~10 s), then read from its cache
    results: dict[str, dict] = {}
    for name in args.only.split(","):
        if name not in PROFILES:
            print(f"bench_reducers: unknown profile {name!r} (one of {', '.join(PROFILES)})", file=sys.stderr)
            return 2
        configs, baseline, title = profile_configs(name, args.smoke, args.with_compile)
        t0 = time.time()
        records = measure_within(configs, args.budget_s * BUDGET_SHARE[name], name)
        add_ratios(records, baseline)
        results[name] = {"title": title, "records": records, "wall_s": time.time() - t0}
    estimates = estimate_rows(results["prumerge-table"]["records"], args.smoke) if "prumerge-table" in results else []
    notes = analysis(results.get("token-reduction", {}).get("records", []), estimates,
                     results.get("tome-vit", {}).get("records", []))
    meta = run_meta(command=" ".join([sys.executable, *sys.argv]), smoke=args.smoke, wall_s=time.time() - started)
    md = [f"# Visual token reducers ({meta['device']}, {meta['date_utc']})", "",
          f"torch {meta['torch']}, transformers {meta['transformers']}, triton {meta['triton']}; "
          f"`{meta['command']}`; {meta['wall_s']:.0f} s. Weights random, inputs random: fidelity = perturbation.", ""]
    for name, res in results.items():
        md += [f"## {res['title']}", "", records_table(res["records"]), ""]
    if estimates:
        md += ["## LLaVA-PruMerge table: analytic estimate (LLM-Viewer's method) beside the measured prefill", "",
               estimate_table(estimates), ""]
    md += ["## Analysis", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(md)
    (out / "bench_reducers.json").write_text(json.dumps({"meta": meta, "profiles": results, "estimates": estimates,
                                                         "analysis": notes}, indent=1, default=str) + "\n")
    (out / "bench_reducers.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
