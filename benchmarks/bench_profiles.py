"""Run built-in profiles the way a user would (`effprof compare NAME`, no options) and check each table.

    python benchmarks/bench_profiles.py token-reduction clip-lora vmamba-directions [--budget-s 540]
    python benchmarks/bench_profiles.py "run:llava --mode generate" ...   # a single `effprof run` row

For every profile: the JSON records and the printed table go to $OUT/<name>.json / <name>.log, and one line
says how many rows ran, the largest latency CV, and the largest stage-sum / whole deviation. A row is steady
when its CV is at most 2% (the issue's bar), and a split adds up when the stages' sum is within 2% of the
whole. Profiles run one after another in fresh processes; `--budget-s` stops starting new ones when the time
left would not fit (a profile that runs past its share is killed and reported, the rest still run).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

STEADY_CV = 0.02
ADDS_UP = 0.02


def check(records: list[dict]) -> str:
    ok = [r for r in records if r.get("status") == "ok"]
    cvs = [r["latency_cv"] for r in ok if r.get("latency_cv") is not None]
    sums = [abs(r["stages_sum_over_whole"] - 1) for r in ok if r.get("stages_sum_over_whole") is not None]
    unsteady = [r["label"] for r in ok if (r.get("latency_cv") or 0) > STEADY_CV]
    split = [r["label"] for r in ok if r.get("stages_sum_over_whole") is not None
             and abs(r["stages_sum_over_whole"] - 1) > ADDS_UP]
    failed = [f"{r.get('label')}: {r.get('status')}: {(r.get('error') or '')[:120]}" for r in records
              if r.get("status") != "ok"]
    line = (f"{len(ok)}/{len(records)} rows ok; max CV {max(cvs, default=0):.2%}; "
            f"max |stages/whole - 1| {max(sums, default=0):.2%}")
    if unsteady:
        line += f"; CV > {STEADY_CV:.0%}: {', '.join(unsteady)}"
    if split:
        line += f"; split off by > {ADDS_UP:.0%}: {', '.join(split)}"
    if failed:
        line += "; failed: " + " | ".join(failed)
    return line


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("targets", nargs="+", help="profile names, or 'run:COMPONENT ARGS' for one row")
    parser.add_argument("--budget-s", type=float, default=540.0)
    args = parser.parse_args()
    out = Path(os.environ.get("OUT", "/tmp/effprof-profiles"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    summary = []
    for i, target in enumerate(args.targets):
        left = args.budget_s - (time.time() - start)
        if left < 20:
            summary.append(f"{target}: not run (budget spent)")
            continue
        if target.startswith("run:"):
            words = shlex.split(target[4:])
            name = "run-" + "-".join(w.lstrip("-") for w in words)[:60]
            command = [sys.executable, "-m", "effprof", "run", *words]
        else:
            name = target
            command = [sys.executable, "-m", "effprof", "compare", target]
        seen = sum(1 for earlier in args.targets[:i] if earlier == target)
        name += f"-run{seen + 1}" if seen else ""  # a profile run twice keeps both runs' files
        records_path = out / f"{name}.json"
        t0 = time.time()
        try:
            with open(out / f"{name}.log", "w") as log:
                proc = subprocess.run([*command, "--json", str(records_path)], stdout=log, stderr=subprocess.STDOUT,
                                      timeout=left - 10)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        seconds = time.time() - t0
        try:
            records = json.loads(records_path.read_text())["records"]
            line = check(records)
        except (OSError, ValueError, KeyError) as exc:
            line = f"no records ({type(exc).__name__})"
        summary.append(f"{target}: exit {rc}, {seconds:.0f} s: {line}")
        print(summary[-1], flush=True)
    (out / "profiles_summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
