"""How long `effprof compare projectors` takes, old-style (a fixed second of timing per row) against the default
(timing sized by the steadiness it reaches), and whether the two agree.

Runs the command line as a user would (`python -m effprof compare projectors --json ...`, each in a
fresh process, so Python and torch start-up and CUDA initialisation count; `RUNS`): the default twice (the
first primes Python's bytecode cache; see `bytecode_env`), then old-style with
`--warmup 0.2 --min-time 1 --max-cv 1` (the defaults before: 0.2 s of warm-up, then one second of timed calls
whatever the CV), the default again, then `--processes 2` twice and old-style with `--processes 2` (every
row measured in two fresh processes and pooled, so its interval covers what differs between processes). For each it records the wall time of the whole command, where the
time went (start-up = wall minus the rows' own wall; per phase: build, count, warm-up, timing, summed over
rows) and each row's median latency with its 95% confidence interval and the SM clock's median during it
(NVML). A row agrees when the two intervals overlap. The default against itself says whether the short
timing reproduces its medians; against old-style, where the intervals do not overlap the clocks say why (a
second of sustained work draws more power, and a power-capped board lowers its clock). The verdict needs
the default run under `--target-s` (10 s on an H200).

    python3 benchmarks/bench_compare_speed.py --out DIR          # GPU machine: about 1.5 minutes
    python3 benchmarks/bench_compare_speed.py --out DIR --smoke  # CPU, tiny projectors: checks the script

Writes DIR/bench_compare_speed.json and DIR/bench_compare_speed.md; the table is printed last.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_STYLE = ["--warmup", "0.2", "--min-time", "1", "--max-cv", "1"]
# The CPU smoke: the projectors at tiny widths, two rows (a CPU is too slow and too noisy for the real sizes).
SMOKE_TARGET = ["linear", "--grid", "tokens=8,16", "--in-dim", "32", "--out-dim", "48", "--device", "cpu"]
PHASES = ("build", "count", "warmup", "timing")


def bytecode_env() -> tuple[dict, str]:
    """The environment of the timed runs, and a note on Python's bytecode cache. A machine where Python
    may not write `__pycache__` next to the installed packages (read-only site-packages, or
    PYTHONDONTWRITEBYTECODE set, as on the lent GPU machines) compiles every imported module from source
    in every process: ~2 s of torch, sympy and dynamo that a user's installation pays once. The runs then
    cache bytecode under a private PYTHONPYCACHEPREFIX, and the first (priming) run's wall time is
    reported apart as the cold start."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    spec = importlib.util.find_spec("torch")
    packages = Path(spec.origin).parent.parent if spec and spec.origin else Path(os.__file__).parent
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None or not os.access(packages, os.W_OK):
        env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "effprof-bench-pycache"))
    note = (f"bytecode cached under PYTHONPYCACHEPREFIX={env['PYTHONPYCACHEPREFIX']}" if "PYTHONPYCACHEPREFIX" in env
            else "bytecode cached in __pycache__ as usual")
    return env, note


ENV, BYTECODE_NOTE = bytecode_env()


def run_compare(target: list[str], extra: list[str], json_path: Path, timeout: int) -> dict:
    """One `effprof compare` in a fresh process: wall seconds, exit code, records."""
    env = ENV
    command = [sys.executable, "-m", "effprof", "compare", *target, *extra, "--json", str(json_path)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    records = json.loads(json_path.read_text())["records"] if json_path.is_file() else []
    rows_s = sum(r.get("wall_s") or 0.0 for r in records)
    return {"command": "effprof compare " + " ".join(target + extra), "exit_code": proc.returncode,
            "wall_s": wall, "startup_s": wall - rows_s,
            "phases_s": {p: sum(r.get(f"phase_{p}_s") or 0.0 for r in records) for p in PHASES},
            "rows": [{k: r.get(k) for k in ("label", "status", "latency_ms_median", "latency_ms_ci95_low",
                                            "latency_ms_ci95_high", "latency_cv", "n_calls", "timing_stop",
                                            "wall_s", "device_name", "sm_clock_mhz_median")} for r in records],
            "stderr_tail": proc.stderr[-1500:] if proc.returncode else ""}


def agreement(new: dict, old: dict) -> list[dict]:
    """Per row: both medians, both CIs, the ratio new/old, both SM clocks, and whether the 95% intervals overlap."""
    rows = []
    for a, b in zip(new["rows"], old["rows"]):
        ok = a["status"] == b["status"] == "ok"
        overlap = ok and a["latency_ms_ci95_low"] <= b["latency_ms_ci95_high"] and \
            b["latency_ms_ci95_low"] <= a["latency_ms_ci95_high"]
        rows.append({"label": a["label"], "new_ms": a["latency_ms_median"], "old_ms": b["latency_ms_median"],
                     "new_ci": [a["latency_ms_ci95_low"], a["latency_ms_ci95_high"]],
                     "old_ci": [b["latency_ms_ci95_low"], b["latency_ms_ci95_high"]],
                     "ratio": a["latency_ms_median"] / b["latency_ms_median"] if ok else None,
                     "new_calls": a["n_calls"], "old_calls": b["n_calls"], "new_stop": a["timing_stop"],
                     "new_clock": a.get("sm_clock_mhz_median"), "old_clock": b.get("sm_clock_mhz_median"),
                     "cis_overlap": bool(overlap)})
    return rows


def clock(mhz) -> str:
    return "-" if mhz is None else f"{mhz:,.0f}"


def agreement_table(rows: list[dict], new_name: str, old_name: str) -> list[str]:
    lines = [f"| row | {new_name} ms [95% CI] | {old_name} ms [95% CI] | ratio | calls | stop | SM MHz | CIs overlap |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        if r["ratio"] is None:
            lines.append(f"| {r['label']} | - | - | - | - | - | - | no (a row failed) |")
            continue
        lines.append(f"| {r['label']} | {r['new_ms']:.4f} [{r['new_ci'][0]:.4f}, {r['new_ci'][1]:.4f}] | "
                     f"{r['old_ms']:.4f} [{r['old_ci'][0]:.4f}, {r['old_ci'][1]:.4f}] | {r['ratio']:.4f} | "
                     f"{r['new_calls']} / {r['old_calls']} | {r['new_stop']} | {clock(r['new_clock'])} / "
                     f"{clock(r['old_clock'])} | {'yes' if r['cis_overlap'] else 'NO'} |")
    return lines


# (key, name, extra arguments, smoke's extra arguments): the runs, in this order
POOLED = ["--processes", "2"]
RUNS = (("first_run", "first run (bytecode cache cold)", [], []),
        ("default", "default (sized by steadiness)", [], []),
        ("old_style", "old-style (--min-time 1)", OLD_STYLE, ["--min-time", "0.1", "--max-cv", "1"]),
        ("default_again", "default again", [], []),
        ("pooled", "--processes 2", POOLED, POOLED),
        ("pooled_again", "--processes 2 again", POOLED, POOLED),
        ("old_style_pooled", "old-style --processes 2", OLD_STYLE + POOLED, ["--min-time", "0.1", "--max-cv", "1"] + POOLED))
# (key of the row table, first run, second run, what the pair asks)
PAIRS = (("rows_repeat", "default", "default_again", "does the short timing reproduce its medians?"),
         ("rows", "default", "old_style", "does it agree with a second of timing per row?"),
         ("rows_pooled_repeat", "pooled", "pooled_again", "with two processes per row, does it reproduce?"),
         ("rows_pooled", "pooled", "old_style_pooled", "with two processes per row, does it agree with old-style?"))


def markdown(doc: dict) -> str:
    lines = [f"`effprof compare {doc['target']}` on {doc['device']} ({doc['date_utc']}; {doc['bytecode']})", "",
             "| run | wall s | start-up s | build s | count s | warm-up s | timing s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, name, _, _ in RUNS:
        run = doc[key]
        p = run["phases_s"]
        lines.append(f"| {name} | {run['wall_s']:.1f} | {run['startup_s']:.1f} | {p['build']:.2f} | {p['count']:.2f} | "
                     f"{p['warmup']:.2f} | {p['timing']:.2f} |")
    names = {key: name for key, name, _, _ in RUNS}
    for key, a, b, question in PAIRS:
        lines += ["", f"{names[a]} against {names[b]}: {question} (SM MHz: NVML's median SM clock during each row's "
                  "timing; 95% CIs: one run's samples, drift-aware; with --processes, pooled over both processes)", ""]
        lines += agreement_table(doc[key], a.replace("_", " "), b.replace("_", " "))
    lines += ["", f"verdict: {doc['verdict']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results" / "compare-speed"),
                        help="folder for bench_compare_speed.json and .md (default: $OUT, else benchmarks/results/)")
    parser.add_argument("--smoke", action="store_true", help="CPU, two tiny projector rows")
    parser.add_argument("--target-s", type=float, default=10.0, help="wall-time target of the default run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = SMOKE_TARGET if args.smoke else ["projectors"]
    timeout = 300 if args.smoke else 240
    short = ["--min-time", "0.02", "--warmup", "0"] if args.smoke else []
    runs = {}
    for key, _, extra, smoke_extra in RUNS:  # the first primes the bytecode cache
        runs[key] = run_compare(target, (short + smoke_extra) if args.smoke else extra, out / f"{key}.json", timeout)
    pairs = {key: agreement(runs[a], runs[b]) for key, a, b, _ in PAIRS}
    new, again, pooled = runs["default"], runs["default_again"], runs["pooled"]
    fast = new["wall_s"] <= args.target_s
    failed = any(run["exit_code"] for run in runs.values())

    def spread(pairs: list[dict]) -> str:
        ratios = [r["ratio"] for r in pairs if r["ratio"] is not None]
        apart = [r for r in pairs if r["ratio"] is not None and not r["cis_overlap"]]
        text = f"medians within {max(abs(1 - x) for x in ratios):.1%} of each other" if ratios else "no medians"
        text += f", 95% CIs overlapping on {len(ratios) - len(apart)} of {len(ratios)} rows"
        clocks = [abs(r["new_clock"] / r["old_clock"] - 1) for r in apart if r["new_clock"] and r["old_clock"]]
        return text + (f" (SM clocks {min(clocks):.1%}-{max(clocks):.1%} apart on the others)" if clocks else "")

    verdict = ("a run failed (see stderr_tail)" if failed else
               f"default {new['wall_s']:.1f} s and {again['wall_s']:.1f} s (first run, bytecode cache cold: "
               f"{runs['first_run']['wall_s']:.1f} s) vs old-style {runs['old_style']['wall_s']:.1f} s: "
               f"{'within' if fast else 'ABOVE'} the {args.target_s:g} s target; --processes 2 "
               f"{pooled['wall_s']:.1f} s and {runs['pooled_again']['wall_s']:.1f} s. "
               + " ".join(f"{key}: {spread(pairs[key])}." for key, _, _, _ in PAIRS))
    device = next((r["device_name"] for r in new["rows"] if r.get("device_name")), platform.processor() or "?")
    doc = {"benchmark": "bench_compare_speed", "target": " ".join(target), "smoke": args.smoke, "device": device,
           "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command_line": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "versions": versions(), "bytecode": BYTECODE_NOTE, **runs, **pairs,
           "agree": {key: bool(pairs[key]) and all(r["cis_overlap"] for r in pairs[key]) for key, _, _, _ in PAIRS},
           "default_within_target": fast, "verdict": verdict}
    (out / "bench_compare_speed.json").write_text(json.dumps(doc, indent=1) + "\n")
    table = markdown(doc)
    (out / "bench_compare_speed.md").write_text(table)
    print(table)
    return 1 if failed else 0


def versions() -> dict:
    """torch, transformers, triton versions without importing them (this process only starts the runs)."""
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "triton"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    sys.exit(main())
