"""The workbench on the GPU: `compare mamba-scaling --graphs --fit seq_len` twice, then `diff` of the two runs.

  (1) `effprof compare mamba-scaling --graphs --fit seq_len --json A.json` (Mamba-130m against a transformer of
      the same width and depth, prompts of 1k-16k tokens): the exponents of latency, GFLOP and peak memory
      against the prompt length per series, with their 95% intervals;
  (2) the same again into B.json;
  (3) `effprof diff A.json B.json`: two runs of the same code on the same device should show no significant
      change (3% threshold, bootstrap 95% interval of the ratio of medians);
  (4) `effprof breakdown ... --uncovered` of Mamba-130m and the transformer at 4k tokens: the FLOP coverage on
      the device (share of kernel time in ops with a FLOP formula) and the costliest ops counted as zero.

Everything is written under --out: A.json, B.json, diff.json, fit.png, the CLI's output (*.log),
bench_workbench.json (meta, command lines, exponents, verdicts) and bench_workbench.md; the table is printed last.

    python3 benchmarks/bench_workbench.py --out DIR            # on the GPU machine, about 2 minutes
    python3 benchmarks/bench_workbench.py --out DIR --smoke    # tiny shapes on the CPU: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_meta  # noqa: E402
from effprof.analysis.fit import exponent_text, fit_records  # noqa: E402

SMOKE_PROFILE = """title: workbench smoke (tiny Mamba vs transformer, cpu)
options: {device: cpu, dtype: fp32, batch: 1}
rows:
""" + "".join(f"  - {{component: mamba-lm, params: {{d_model: 32, n_layer: 1, seq_len: {L}}}, label: mamba L={L}}}\n"
              for L in (32, 64, 128)) + \
    "".join(f"  - {{component: transformer-lm, params: {{d_model: 64, n_layer: 1, seq_len: {L}}}, label: tf L={L}}}\n"
            for L in (32, 64, 128))


def effprof(args: list[str], log: Path) -> tuple[int, float, str]:
    """Run the CLI as a user would (`python -m effprof`, repo on PYTHONPATH); keep its output in `log`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "effprof", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    log.write_text(f"$ effprof {' '.join(args)}\n(exit {proc.returncode}, {seconds:.1f} s)\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, seconds, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), required="OUT" not in os.environ,
                        help="Folder for the results (created; default $OUT).")
    parser.add_argument("--smoke", action="store_true", help="Tiny profile on the CPU.")
    parser.add_argument("--min-time", type=float, default=None, help="Seconds of timing per row.")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        profile = out / "workbench_smoke.yaml"
        profile.write_text(SMOKE_PROFILE)
        target, extra = str(profile), ["--min-time", str(args.min_time or 0.02), "--warmup", "0"]
    else:
        target, extra = "mamba-scaling", ["--graphs", "--min-time", str(args.min_time or 0.25), "--warmup", "0.1"]
    runs = {}
    for name in ("A", "B"):
        cmd = ["compare", target, *extra, "--fit", "seq_len", "--json", str(out / f"{name}.json")]
        if name == "A":
            cmd += ["--plot", str(out / "fit.png")]
        rc, seconds, _ = effprof(cmd, out / f"compare_{name}.log")
        runs[name] = {"command": "effprof " + " ".join(cmd), "exit": rc, "wall_s": seconds}
    diff_cmd = ["diff", str(out / "A.json"), str(out / "B.json"), "--json", str(out / "diff.json")]
    rc, seconds, diff_out = effprof(diff_cmd, out / "diff.log")
    runs["diff"] = {"command": "effprof " + " ".join(diff_cmd), "exit": rc, "wall_s": seconds}
    coverage = {}
    shapes = (["--d-model", "32", "--n-layer", "1", "--seq-len", "64", "--device", "cpu"] if args.smoke
              else ["--preset", "130m", "--seq-len", "4096"])
    for component, more in (("mamba-lm", []), ("transformer-lm", [] if args.smoke else ["--n-layer", "24"])):
        cmd = ["breakdown", component, *shapes, *more, "--depth", "0", "--uncovered"]
        rc, seconds, text = effprof(cmd, out / f"uncovered_{component}.log")
        runs[f"uncovered {component}"] = {"command": "effprof " + " ".join(cmd), "exit": rc, "wall_s": seconds}
        found = [" ".join(line.split()) for line in text.splitlines() if "FLOP coverage" in line]
        coverage[component] = found[0] if found else "-"

    fits = {}
    for name in ("A", "B"):
        try:
            records = json.loads((out / f"{name}.json").read_text())["records"]
            fits[name] = fit_records(records, "seq_len")
        except Exception as exc:  # a failed run: the log says why; keep what there is
            fits[name] = f"{type(exc).__name__}: {exc}"
    try:
        diff = json.loads((out / "diff.json").read_text())
    except Exception as exc:
        diff = {"rows": [], "error": f"{type(exc).__name__}: {exc}"}

    lines = ["| series | metric | run A exponent [95% CI] | run B exponent [95% CI] |", "| --- | --- | --- | --- |"]
    if isinstance(fits.get("A"), list):
        b_by = {(f["series"], f["metric"]): f for f in fits["B"]} if isinstance(fits.get("B"), list) else {}
        for f in fits["A"]:
            other = b_by.get((f["series"], f["metric"]))
            lines.append(f"| {f['series']} | {f['metric']} | {exponent_text(f)} | "
                         f"{exponent_text(other) if other else '-'} |")
    lines += ["", "| row | A ms | B ms | B/A [95% CI] | verdict |", "| --- | --- | --- | --- | --- |"]
    for r in diff.get("rows", []):
        ci = "" if r.get("ratio_ci95_low") is None else f" [{r['ratio_ci95_low']:.3f}, {r['ratio_ci95_high']:.3f}]"
        lines.append(f"| {r['label']} | {r['base_ms']:.4g} | {r['new_ms']:.4g} | {r['ratio']:.3f}{ci} | {r['verdict']} |")
    lines += ["", "| component (4k tokens) | FLOP coverage |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in coverage.items()]
    lines.append("")
    lines.append("runs: " + "; ".join(f"{k} exit {v['exit']} in {v['wall_s']:.0f} s" for k, v in runs.items()))
    table = "\n".join(lines)
    doc = {"meta": run_meta(command=" ".join([sys.executable, *sys.argv]), smoke=args.smoke), "runs": runs,
           "fits": fits, "diff": diff, "coverage": coverage}
    (out / "bench_workbench.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "bench_workbench.md").write_text(f"# bench_workbench ({doc['meta']['device']}, {doc['meta']['date_utc']})\n\n"
                                            + table + "\n")
    print(table)
    return 0 if all(v["exit"] == 0 for v in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
