"""Two GPUs: a comparison fanned out over them, and a language model split across them.

Through effprof's command line (`python -m effprof`, from the repository root), on a host with two GPUs:

  (a) fan-out: `effprof compare projectors` and `effprof compare clip-vtp` with `--gpus 1` and `--gpus 2`
      (the same worker pool, one worker per GPU), each also with `--processes 2` (every row measured in
      two processes and pooled; with two GPUs the second pass starts on the other board): wall time of
      the whole comparison, and per row the two medians, their ratio and whether their 95% confidence
      intervals overlap (a fan-out must not change what a row measures); the host's CPU load while the
      rows ran;
  (b) tensor parallelism: the largest LM that is ready (default `llava --preset llava-1.5-13b`: prefill of
      one image + 64 text tokens at batch 1, decode at batch 16 with 2048 tokens of context; `--lm
      transformer-lm:2.8b`: prefill of 2048 tokens, decode at 2048), and with `--with-mamba` `mamba-lm
      --preset 2.8b` prefill, each at `--tp 1,2`: latency, tokens/s, per-GPU peak memory, the NCCL
      kernels' share of device time, scaling efficiency against tp 1.

Writes DIR/bench_multigpu.json (every record, with device, versions, date and command line) and
DIR/bench_multigpu.md, and prints the markdown tables last. About 4 minutes on two H200s.

    python3 benchmarks/bench_multigpu.py --out DIR            # on a two-GPU machine
    python3 benchmarks/bench_multigpu.py --out DIR --smoke    # CPU workers, tiny shapes: checks the script runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAN_PROFILES = ("projectors", "clip-vtp")
SMOKE_FAN = {"title": "smoke fan-out", "options": {"device": "cpu", "dtype": "fp32", "batch": 2, "min_time": 0.05,
                                                   "warmup": 0},
             "rows": [{"component": c, "params": {"tokens": 16, "in_dim": 32, "out_dim": 64}}
                      for c in ("linear", "mlp", "gated", "lowrank")]}


def effprof(args: list[str], out: Path, name: str, timeout_s: float = 150) -> tuple[float, list[dict], int]:
    """Run `python -m effprof ARGS --json out/NAME.json`; (wall seconds, records, exit code)."""
    path = out / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    start = time.perf_counter()
    # its own session, so that a timeout ends the workers and ranks it spawned too
    proc = subprocess.Popen([sys.executable, "-m", "effprof", *args, "--json", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:  # keep what finished (the JSON is rewritten after every row)
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        code, log = 124, f"{log}\ntimed out after {timeout_s} s"
    wall = time.perf_counter() - start
    (out / f"{name}.log").write_text(log)
    records = json.loads(path.read_text())["records"] if path.is_file() else []
    if code not in (0, 1):
        print(f"{name}: exit code {code}: {(log.strip().splitlines() or [''])[-1]}", file=sys.stderr)
    return wall, records, code


def fan_out(out: Path, smoke: bool, only_pooled: bool = False, profiles: tuple[str, ...] = FAN_PROFILES) -> dict:
    result = {}
    if smoke:
        import yaml

        (out / "smoke_fan.yaml").write_text(yaml.safe_dump(SMOKE_FAN, sort_keys=False))
        targets = {"smoke": str(out / "smoke_fan.yaml")}
    else:
        targets = {p: p for p in profiles}
    for name, target in targets.items():
        runs = {}
        for n, processes in ((1, 2), (2, 2)) if only_pooled else ((1, 1), (2, 1), (1, 2), (2, 2)):
            pool = ["--workers", str(n), "--device", "cpu"] if smoke else ["--gpus", str(n)]
            pool += ["--processes", str(processes)] if processes > 1 else []
            key = n if processes == 1 else f"{n}x{processes}"
            wall, records, code = effprof(["compare", target, *pool], out, f"fan_{name}_gpus{key}")
            busy = [r["host_cpu_busy_pct"] for r in records if r.get("host_cpu_busy_pct") is not None]
            runs[key] = {"wall_s": wall, "exit_code": code, "records": records,
                         "host_cpu_busy_pct_mean": sum(busy) / len(busy) if busy else None}
        result[name] = {"runs": runs, "rows": [] if only_pooled else agreement(runs[1]["records"], runs[2]["records"]),
                        "rows_processes2": agreement(runs["1x2"]["records"], runs["2x2"]["records"])}
    return result


def agreement(gpus1: list[dict], gpus2: list[dict]) -> list[dict]:
    """Per row: both medians with their 95% CIs, the ratio, whether the CIs overlap, where the row ran."""
    rows = []
    for a, b in zip(gpus1, gpus2):
            if a.get("status") != "ok" or b.get("status") != "ok":
                rows.append({"label": a["label"], "status": f"{a.get('status')}/{b.get('status')}"})
                continue
            overlap = (a["latency_ms_ci95_low"] <= b["latency_ms_ci95_high"]
                       and b["latency_ms_ci95_low"] <= a["latency_ms_ci95_high"])
            rows.append({"label": a["label"], "status": "ok", "median_ms_gpus1": a["latency_ms_median"],
                         "ci_gpus1": [a["latency_ms_ci95_low"], a["latency_ms_ci95_high"]],
                         "median_ms_gpus2": b["latency_ms_median"],
                         "ci_gpus2": [b["latency_ms_ci95_low"], b["latency_ms_ci95_high"]],
                         "ratio_2_over_1": b["latency_ms_median"] / a["latency_ms_median"], "cis_overlap": overlap,
                         "ran_on_gpus2": (f"GPU {b.get('gpu_index_by_process') or b['gpu_index']}: {b.get('gpu_name')}"
                                          if b.get("gpu_index") is not None else f"cpu worker {b.get('worker')}"),
                         "verdict": b.get("verdict")})
    return rows


def tensor_parallel(out: Path, smoke: bool, lm: str, with_mamba: bool, with_graphs: bool = False) -> dict:
    import yaml

    if smoke:
        small = {"d_model": 32, "n_layer": 2, "seq_len": 64}
        doc = {"title": "smoke tp", "options": {"device": "cpu", "dtype": "fp32", "min_time": 0.05, "warmup": 0},
               "rows": [{"component": "llava", "params": {"preset": "tiny", "prompt_tokens": 8},
                         "label": "llava tiny prefill"},
                        {"component": "llava", "params": {"preset": "tiny", "mode": "decode", "context": 16},
                         "label": "llava tiny decode"},
                        {"component": "mamba-lm", "params": small, "label": "mamba-lm prefill"}]}
    else:
        name, _, preset = lm.partition(":")
        if name == "llava":  # prompt = 576 image tokens + 64 text tokens; decode at 2048 tokens of context
            prefill, decode = {"preset": preset, "mode": "prefill"}, {"preset": preset, "mode": "decode", "context": 2048}
        else:
            prefill = {"preset": preset, "seq_len": 2048, "mode": "prefill"}
            decode = {"preset": preset, "seq_len": 2048, "mode": "decode"}
        rows = [{"component": name, "params": prefill, "options": {"batch": 1}, "label": f"{name} {preset} prefill"},
                {"component": name, "params": decode, "options": {"batch": 16}, "label": f"{name} {preset} decode"}]
        if with_graphs:  # the decode step replayed as one CUDA graph per rank, NCCL's all-reduces captured in it
            rows.append({"component": name, "params": decode, "options": {"batch": 16, "graphs": True},
                         "label": f"{name} {preset} decode graphs"})
        if with_mamba:
            rows.append({"component": "mamba-lm", "params": {"preset": "2.8b", "seq_len": 2048, "mode": "prefill"},
                         "options": {"batch": 1}, "label": "mamba-lm 2.8b prefill"})
        doc = {"title": "tensor parallel", "options": {"min_time": 0.5}, "rows": rows}
    (out / "tp.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    wall, records, code = effprof(["compare", str(out / "tp.yaml"), "--tp", "1,2"], out, "tp",
                                  timeout_s=170 + 60 * with_graphs + 40 * with_mamba)
    return {"wall_s": wall, "exit_code": code, "records": records}


def markdown(result: dict) -> str:
    lines = ["## Fan-out: `effprof compare P --gpus N` (wall time of the whole comparison)", "",
             "| profile | GPUs (x processes per row) | wall s | host CPU busy % (mean over rows) |",
             "| --- | --- | --- | --- |"]
    for name, fan in result["fan_out"].items():
        for n, run in fan["runs"].items():
            busy = run["host_cpu_busy_pct_mean"]
            lines.append(f"| {name} | {n} | {run['wall_s']:.1f} | {'-' if busy is None else f'{busy:.0f}'} |")
    for key, what in (("rows", ""), ("rows_processes2", ", both with --processes 2 (every row pooled over two processes)")):
        lines += ["", f"Per row: medians (ms) with their 95% CIs at --gpus 1 and --gpus 2{what}", "",
                  "| profile | row | gpus 1 median [CI] | gpus 2 median [CI] | ratio 2/1 | CIs overlap | ran on (gpus 2) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, fan in result["fan_out"].items():
            for r in fan[key]:
                if r["status"] != "ok":
                    lines.append(f"| {name} | {r['label']} | {r['status']} | | | | |")
                    continue
                a, b = r["ci_gpus1"], r["ci_gpus2"]
                lines.append(f"| {name} | {r['label']} | {r['median_ms_gpus1']:.4g} [{a[0]:.4g}, {a[1]:.4g}] | "
                             f"{r['median_ms_gpus2']:.4g} [{b[0]:.4g}, {b[1]:.4g}] | {r['ratio_2_over_1']:.3f} | "
                             f"{'yes' if r['cis_overlap'] else 'no'} | {r['ran_on_gpus2']} |")
    tp = result["tensor_parallel"]
    if tp is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"## Tensor parallelism: `effprof compare tp.yaml --tp 1,2` ({tp['wall_s']:.0f} s)", "",
              "| row | tp | latency ms median | tokens/s | peak act. MiB per rank | weights MiB per rank | "
              "comm % of device time | speedup vs tp 1 | scaling efficiency % |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in tp["records"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['label']} | {r.get('tp', '')} | {r.get('status')}: {r.get('error', '')} | | | | | | |")
            continue

        def fmt(key, f="{:.3g}", scale=1.0):
            return "-" if r.get(key) is None else f.format(scale * r[key])

        lines.append(f"| {r['label']} | {r.get('tp', 1)} | {fmt('latency_ms_median', '{:.4g}')} | "
                     f"{fmt('throughput_per_s', '{:,.0f}')} | {r.get('peak_mem_mib_per_rank') or fmt('peak_mem_mib', '{:.1f}')} | "
                     f"{r.get('weights_mib_per_rank') or fmt('weights_mib', '{:.1f}')} | "
                     f"{fmt('comm_share', '{:.1f}', 100)} | {fmt('tp_speedup', '{:.2f}')} | "
                     f"{fmt('tp_scaling_efficiency', '{:.0f}', 100)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for bench_multigpu.json/.md and the logs")
    parser.add_argument("--smoke", action="store_true", help="CPU workers and gloo, tiny shapes (checks the script)")
    parser.add_argument("--lm", default="llava:llava-1.5-13b",
                        help="COMPONENT:PRESET of the tensor-parallel LM (llava:llava-1.5-13b, transformer-lm:2.8b)")
    parser.add_argument("--with-mamba", action="store_true", help="add mamba-lm 2.8b prefill at tp 1 and 2 (+40 s)")
    parser.add_argument("--with-graphs", action="store_true", help="add the decode row under --graphs (+30 s)")
    parser.add_argument("--skip-fan-out", action="store_true", help="tensor parallelism only")
    parser.add_argument("--skip-tp", action="store_true", help="fan-out only")
    parser.add_argument("--only-pooled", action="store_true", help="fan-out with --processes 2 only")
    parser.add_argument("--profiles", default=",".join(FAN_PROFILES), help="the fanned-out profiles, comma-separated")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"fan_out": {} if args.skip_fan_out else fan_out(out, args.smoke, args.only_pooled,
                                                                    tuple(args.profiles.split(","))),
              "tensor_parallel": None if args.skip_tp else tensor_parallel(out, args.smoke, args.lm, args.with_mamba,
                                                                           args.with_graphs)}
    import torch  # only now: the parent must not hold a CUDA context while the workers measure
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result["meta"] = {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"],
        "torch": torch.__version__, "transformers": transformers.__version__, "triton": triton_version,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]), "smoke": args.smoke}
    (out / "bench_multigpu.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = markdown(result)
    (out / "bench_multigpu.md").write_text(f"# bench_multigpu ({', '.join(result['meta']['devices'])}, "
                                           f"{result['meta']['date_utc']})\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
