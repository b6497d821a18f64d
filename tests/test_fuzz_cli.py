"""Fuzz the CLI with bad and good input (issue 17), in-process through `effprof.cli.main`.

Each example is one invocation built from pieces, each piece good or bad: a command (run, compare, list,
env, breakdown, roofline, calibrate), common options, component parameters, output paths, a profile
assembled from well- and ill-formed parts, a checkpoint (state dict, tensor, list, empty, corrupt,
pickled code, configs with wrong types or missing keys) or a failing plugin. The oracle, per invocation:
no exception escapes and no traceback is printed; bad input exits non-zero (never 3, the internal-error
code) with exactly one line on stderr, `effprof: error: ...`; good input exits 0 and writes what it was
asked to; no temporary or half-written file is left; nothing ran from a pickle.

Reproducible: examples derive from a fixed seed (hypothesis, derandomized); EFFPROF_FUZZ_SEED=N draws
another set, EFFPROF_FUZZ_EXAMPLES=N sets how many (default 140 with --run-slow, 70 without, as CI runs it).
Every failure is appended, with its seed, argv and files, to .pytest_cache/effprof-fuzz/failures.jsonl (or
EFFPROF_FUZZ_RECORD), and the failing example is printed by hypothesis. Terminals and signals need real
processes: tests/test_bad_input.py covers them.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import time
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, seed as hseed, settings, strategies as st  # noqa: E402

from effprof.cli.main import main  # noqa: E402

SEED = int(os.environ.get("EFFPROF_FUZZ_SEED", "0"))
EXAMPLES = os.environ.get("EFFPROF_FUZZ_EXAMPLES")  # None: 140 with --run-slow, else 70 (a good example times a run)
ROOT = Path(__file__).resolve().parent.parent
RECORD = Path(os.environ.get("EFFPROF_FUZZ_RECORD", ROOT / ".pytest_cache" / "effprof-fuzz" / "failures.jsonl"))
D = "{dir}"  # replaced by the example's own folder
GOOD, BAD = True, False
SMALL = {"linear": ["--tokens", "4", "--in-dim", "8", "--out-dim", "8"],
         "lowrank": ["--tokens", "4", "--in-dim", "8", "--out-dim", "8", "--rank", "2"],
         "mamba": ["--d-model", "8", "--seq-len", "8", "--scan-backend", "ref", "--conv-backend", "ref"],
         "ssm-conv": ["--d-model", "4", "--length", "16", "--d-state", "4"]}
BAD_INTS = ["0", "-3", "99999999999999999999999", "1000000000000", "x", "", "nan", "1.5", "1e3"]


class Marker:
    """Pickled into a checkpoint: if effprof ever unpickled it with code execution, the marker file appears."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# Half the examples aim at good input (every piece drawn good), half may draw bad pieces anywhere.
AIM = {"bad": True}


def one(choices):
    """A strategy for one (tokens, good, ...) piece out of a list of them (good ones only when aiming good)."""
    return st.sampled_from(choices).filter(lambda choice: AIM["bad"] or choice[1] is GOOD)


# ---- common options: each absent, good or bad -------------------------------------------------------
OPTIONS = {
    "--batch": (["1", "2"], ["0", "-1", "1000000000000", "x", "", "nan", "1.5"]),
    "--dtype": (["fp32", "auto"], ["int8", "", "FP32x", "bf17"]),
    "--device": (["cpu"], ["tpu", "", "cuda:x", "cuda:-1", "meta:0"] + ([] if torch.cuda.is_available() else ["cuda"])),
    "--warmup": (["0"], ["nan", "inf", "-1", "1e300", "x"]),
    "--max-time": (["1"], ["nan", "inf", "0", "-5", "1e300"]),
    "--max-cv": (["0.5"], ["nan", "0", "1.5", "-1"]),
    "--seed": (["0", "7"], ["18446744073709551616", "-1", "x", "1e3"]),
}
FLAGS = [(["--cold"], GOOD), (["--warm"], GOOD), (["--debug"], GOOD), (["--graphs"], BAD),
         (["--graphs", "--compile"], BAD), (["--train"], GOOD), (["--train", "--optimizer", "sgd"], GOOD),
         (["--optimizer", "nope"], BAD), (["--tp", "x"], BAD), (["--tp", "0"], BAD)]
POOL = [([], GOOD)] * 4 + [(["--workers", "0"], BAD), (["--workers", "99999999999999999999"], BAD),
                           (["--workers", "x"], BAD), (["--gpus", "abc"], BAD), (["--tp", ""], BAD)]


@st.composite
def common_options(draw, only=None):
    argv, good = [], True
    for option, (goods, bads) in OPTIONS.items():
        if only is not None and option not in only:
            continue
        kind = draw(st.sampled_from(["absent", "absent", "good"] + ["bad"] * AIM["bad"]))
        if kind == "good":
            argv += [option, draw(st.sampled_from(goods))]
        elif kind == "bad":
            argv += [option, draw(st.sampled_from(bads))]
            good = False
    if only is None:
        if draw(st.booleans()):
            flags, ok = draw(one(FLAGS))
            argv += flags
            good &= ok
        bad_min = draw(st.sampled_from([None] * 6 + ["nan", "inf", "0", "-1", "1e300", ""] * AIM["bad"]))
        argv += ["--min-time", bad_min if bad_min is not None else "0.01"]
        good &= bad_min is None
        if "--warmup" not in argv:
            argv += ["--warmup", "0"]
    if "--device" not in argv:
        argv += ["--device", "cpu"]
    return argv, good


@st.composite
def component_args(draw):
    name = draw(st.sampled_from(sorted(SMALL)))
    argv, good = list(SMALL[name]), True
    kind = draw(st.sampled_from(["good"] * 3 + ["bad-value", "unknown-option", "missing-value", "unknown-name"]
                                * AIM["bad"]))
    if kind == "bad-value":
        i = draw(st.sampled_from(range(0, len(argv), 2)))
        if argv[i] not in ("--scan-backend", "--conv-backend"):
            argv[i + 1] = draw(st.sampled_from(BAD_INTS))
        else:
            argv[i + 1] = draw(st.sampled_from(["gpu", "", "none"]))
        good = False
    elif kind == "unknown-option":
        argv += ["--bogus", "1"]
        good = False
    elif kind == "missing-value":
        argv += [argv[0]]
        good = False
    elif kind == "unknown-name":
        name, good = draw(st.sampled_from(["nope", "", "linear*", "../linear"])), False
    return [name, *argv], good


OUTPUTS = [((), GOOD, ()), (("--csv", f"{D}/o.csv"), GOOD, ("o.csv",)), (("--json", f"{D}/o.json"), GOOD, ("o.json",)),
           (("--csv", f"{D}/o.csv", "--json", f"{D}/o.json"), GOOD, ("o.csv", "o.json")),
           (("--json", "-"), GOOD, ()), (("--csv", "/dev/null"), GOOD, ()),
           (("--csv", D), BAD, ()), (("--csv", f"{D}/no/such/o.csv"), BAD, ()), (("--json", ""), BAD, ()),
           (("--csv", "/proc/o.csv"), BAD, ()), (("--csv", f"{D}/{'x' * 300}.csv"), BAD, ()),
           (("--csv", f"{D}/same", "--json", f"{D}/same"), BAD, ()), (("--csv", "-", "--json", "-"), BAD, ()),
           (("--csv", "~nosuchuser_effprof/o.csv"), BAD, ()), (("--json", "/dev/full"), BAD, ())]


# ---- profiles from well- and ill-formed parts ----------------------------------------------------------
GOOD_PARAMS = {"tokens": 4, "in_dim": 8, "out_dim": 8}
ROW_PIECES = {
    "component": ([("linear", GOOD)], [(None, BAD), (3, BAD), (["linear"], BAD), ({"a": 1}, BAD), ("nope", BAD)]),
    "params": ([(GOOD_PARAMS, GOOD)], [([1, 2], BAD), ("tokens", BAD), ({**GOOD_PARAMS, "tokens": 0}, BAD),
                                       ({**GOOD_PARAMS, "tokens": "big"}, BAD), ({**GOOD_PARAMS, "nope": 1}, BAD),
                                       ({**GOOD_PARAMS, "tokens": [4]}, BAD)]),
    "options": ([(None, GOOD), ({"cold": "no"}, GOOD), ({"batch": "2"}, GOOD)],
                [({"batch": "big"}, BAD), ({"batch": None}, BAD), ({"min_time": "x"}, BAD), ({"device": 3}, BAD),
                 ({"nope": 1}, BAD), ("fast", BAD), ({"warmup": float("inf")}, BAD), ({"cold": "maybe"}, BAD)]),
}
GRIDS = [(None, GOOD), ({"tokens": [4, 8]}, GOOD), ({"batch": [1, 2]}, GOOD), ({"tokens": [[4, 8]]}, BAD),
         ({"tokens": None}, BAD), ({"tokens": []}, BAD), ({"nope": [1]}, BAD), (5, BAD), ({"batch": ["x"]}, BAD)]


@st.composite
def profile(draw):
    good = True
    base = {"device": "cpu", "min_time": 0.01, "warmup": 0}
    doc = {"title": "fuzz", "options": base}
    if draw(st.booleans()):
        rows = []
        for i in range(draw(st.integers(1, 2))):
            row = {}
            for key, (goods, bads) in ROW_PIECES.items():
                value, ok = draw(one(goods + bads if AIM["bad"] and draw(st.integers(0, 3)) == 0 else goods))
                if value is not None or key == "component":
                    row[key] = value
                good &= ok
            row["label"] = f"row{i}"
            rows.append(row)
        doc["rows"] = rows
        rows_piece, ok = draw(one([(None, GOOD)] * 6 + [(3, BAD), ([], BAD), ("rows", BAD)]))
        if rows_piece is not None:
            doc["rows"] = rows_piece
            good = ok
        labels = ["row0"]
    else:
        grid, ok = draw(one(GRIDS))
        doc.update(component="linear", params={"in_dim": 8, "out_dim": 8, "tokens": 4}, grid=grid)
        good &= ok
        labels = ["linear"] if not grid or not isinstance(grid, dict) else [f"{k}={v[0]}" for k, v in grid.items()
                                                                            if isinstance(v, list) and v][:1]
    baseline, ok = draw(one([(None, GOOD)] * 4 + [(labels[0] if labels else None, GOOD), ("nope", BAD)]))
    if baseline is not None:
        doc["baseline"] = baseline
        good &= ok
    extra, ok = draw(one([(None, GOOD)] * 5 + [({"bogus": 1}, BAD), ({"options": [1]}, BAD), ({"title": [1]}, BAD)]))
    if extra:
        doc.update(extra)
        good &= ok
    import yaml

    text = yaml.safe_dump(doc).encode()
    corruption, ok = draw(one([(b"", GOOD)] * 6 + [(b"# caf\xe9\n", BAD), (b"rows: [\n", BAD), (b"- 1\n", BAD)]))
    if corruption:
        text = corruption + text if corruption.startswith(b"#") else corruption
        good &= ok
    return text, good


# ---- checkpoints --------------------------------------------------------------------------------------
def checkpoint_files(kind: str, folder: Path) -> str:
    """Write the checkpoint `kind` under `folder`; return the --pretrained argument."""
    state = {"weight": torch.randn(8, 8), "bias": torch.randn(8)}
    if kind in ("good.pt", "good.safetensors", "truncated.pt", "wrong-shape.pt"):
        path = folder / kind
        if kind.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(state, path)
        else:
            torch.save(state if kind != "wrong-shape.pt" else {"weight": torch.randn(3, 3)}, path)
        if kind == "truncated.pt":
            path.write_bytes(path.read_bytes()[:200])
        return str(path)
    path = folder / kind
    if kind == "tensor.pt":
        torch.save(torch.ones(2), path)
    elif kind == "list.pt":
        torch.save([torch.ones(2)], path)
    elif kind == "evil.pt":
        torch.save({"weight": Marker(folder / "PWNED")}, path)
    elif kind == "plain-pickle.pt":
        path.write_bytes(pickle.dumps({"weight": Marker(folder / "PWNED")}))
    elif kind in ("empty.pt", "empty.safetensors"):
        path.write_bytes(b"")
    elif kind == "corrupt.safetensors":
        path.write_bytes(b"\xff" * 64)
    elif kind == "empty-dir":
        path.mkdir()
    elif kind == "missing":
        pass
    return str(path) if kind != "tilde-user" else "~nosuchuser_effprof/x.pt"


CHECKPOINTS = [("good.pt", GOOD), ("good.safetensors", GOOD), ("truncated.pt", BAD), ("wrong-shape.pt", BAD),
               ("tensor.pt", BAD), ("list.pt", BAD), ("evil.pt", BAD), ("plain-pickle.pt", BAD), ("empty.pt", BAD),
               ("empty.safetensors", BAD), ("corrupt.safetensors", BAD), ("empty-dir", BAD), ("missing", BAD),
               ("tilde-user", BAD)]
MAMBA_CONFIG = {"d_model": 8, "n_layer": 1, "vocab_size": 16}
MAMBA_CONFIGS = [(MAMBA_CONFIG, GOOD), ({**MAMBA_CONFIG, "d_model": "wide"}, BAD), ({"hidden_size": 8}, BAD),
                 ({**MAMBA_CONFIG, "n_layer": 10**12}, BAD), ({**MAMBA_CONFIG, "ssm_cfg": [1]}, BAD),
                 ({**MAMBA_CONFIG, "tie_embeddings": "yes"}, BAD), (b"{\"d_model\": \"caf\xe9\"}", BAD),
                 (b"[1, 2]", BAD), (b"{", BAD), (b"", BAD)]


def mamba_checkpoint(config, folder: Path) -> str:
    from effprof.modules.mamba import MambaLM, MambaLMConfig

    target = folder / "mamba"
    target.mkdir()
    (target / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    torch.save(MambaLM(MambaLMConfig(**MAMBA_CONFIG)).state_dict(), target / "pytorch_model.bin")
    return str(target)


RECORDS_GOOD = {"records": [{"label": "a", "dtype": "bf16", "status": "ok", "arithmetic_intensity_flop_per_byte": 10.0,
                             "tflops_per_s": 50.0, "peak_tflops": 900.0, "peak_gb_per_s": 3000.0, "verdict": "memory"}]}
RECORDS = [(RECORDS_GOOD, GOOD), (3, BAD), ("records", BAD), ({"records": [1, 2]}, BAD), ([1, 2], BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "tflops_per_s": "fast"}]}, BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "peak_gb_per_s": -5.0}]}, BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "label": [1]}]}, BAD), ({"records": []}, BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "tflops_per_s": 1e308}]}, BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "peak_gb_per_s": 1e-300}]}, BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "status": 1}]}, BAD),
           ({"records": [{**RECORDS_GOOD["records"][0], "tflops_per_s": float("nan")}]}, BAD)]
# Records files: what a path may name instead of a JSON file (written by `input_file`).
INPUT_FILES = [("r.json", GOOD), ("fifo", BAD), ("/dev/zero", BAD), ("/proc/self/status", BAD), ("deep.json", BAD),
               ("r.csv", BAD), ("latin.json", BAD), ("missing.json", BAD), ("", BAD)]


def input_file(kind: str, folder: Path, doc) -> str:
    """Write the records file `kind` (holding `doc` where it is a JSON file) under `folder`; return its path."""
    if kind.startswith("/") or not kind:
        return kind
    path = folder / kind
    if kind == "r.json":
        path.write_text(json.dumps(doc))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep.json":
        path.write_text("[" * 50_000 + "]" * 50_000)
    elif kind == "r.csv":
        path.write_text("label,component,status,latency_ms_median\na,linear,ok,1.0\n")
    elif kind == "latin.json":
        path.write_bytes(b'{"records": [{"label": "caf\xe9"}]}')
    return str(path)


SAMPLES_MS = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99]
DIFF_RECORD = {"label": "a", "component": "linear", "status": "ok", "batch": 1, "dtype": "fp32",
               "latency_ms_median": 1.0, "latency_samples_ms": SAMPLES_MS}
DIFF_PIECES = [({}, GOOD), ({}, GOOD), ({"latency_samples_ms": None}, GOOD),
               ({"latency_samples_ms": [[1.0]]}, BAD), ({"latency_samples_ms": {"a": 1}}, BAD),
               ({"latency_samples_ms": 3.0}, BAD), ({"component": ["linear"]}, BAD), ({"latency_ms_median": 0}, BAD),
               ({"latency_samples_ms": [float("nan")] * 3}, BAD), ({"latency_samples_ms": [-1.0] * 3}, BAD),
               ({"latency_samples_ms": ["1"] * 3}, BAD), ({"latency_samples_ms": [True] * 3}, BAD),
               ({"status": 1}, BAD), ({"latency_ms_median": None, "latency_samples_ms": None}, BAD),
               ({"batch": "one"}, BAD)]


# ---- one invocation -----------------------------------------------------------------------------------
# Examples per kind of invocation, out of 140 (scaled to EXAMPLES): every command is driven every run.
BUDGET = {"run": 28, "compare": 18, "profile": 28, "checkpoint": 18, "mamba-checkpoint": 8, "list": 5, "env": 5,
          "breakdown": 10, "roofline": 9, "calibrate": 1, "plugin": 8, "nothing": 1, "diff": 14, "quality": 6,
          "eval": 5, "estimate": 3, "tp": 5}
QUALITY_TINY = ["--profile", f"{D}/q.yaml", "--device", "cpu", "--set", "tokens=4", "--set", "in_dim=8", "--set",
                "out_dim=8", "--steps", "2", "--no-cost", "--samples", "8"]
EVAL_TINY = ["test-fuzz-classifier", "--device", "cpu", "--batch", "2", "--min-time", "0.01", "--warmup", "0"]


class MeanColour(torch.nn.Module):
    """Two classes from the mean colour, with the evaluation preprocessing `effprof eval` needs."""

    def __init__(self):
        from effprof.modules.preprocess import Preprocess

        super().__init__()
        self.head = torch.nn.Linear(3, 2)
        self.preprocess = Preprocess(8, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def forward(self, images):
        return self.head(images.mean(dim=(2, 3)))


def _register_classifier():
    from effprof.core.registry import Built, register_component

    @register_component("test-fuzz-classifier", unit="img", family="vision")
    def classifier(ctx):
        """A two-class classifier on mean colour (eval's good input)."""
        return Built(MeanColour().to(ctx.device, ctx.dtype),
                     lambda b: (torch.rand(b, 3, 8, 8, device=ctx.device, dtype=ctx.dtype),), "img")


_register_classifier()


def image_folder(folder: Path, bomb: bool = False) -> None:
    from PIL import Image

    for name in ("a", "b"):
        (folder / "data" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / "data" / name / "0.png")
    if bomb:  # 400 million pixels in a few kB: past Pillow's decompression-bomb limit
        Image.new("1", (20000, 20000)).save(folder / "data" / "a" / "bomb.png")


@st.composite
def invocation(draw, command):
    """(argv, good, setup(folder) -> None, expected output files, plugin spec or None)."""
    AIM["bad"] = draw(st.booleans())
    setup, expected, plugin = [], (), None
    if command == "run":
        args, good = draw(component_args())
        opts, ok = draw(common_options())
        out, ok2, expected = draw(one(OUTPUTS))
        return ["run", *args, *opts, *out], good and ok and ok2, setup, expected, plugin
    if command == "compare":
        grid, good = draw(one([(["--grid", "tokens=4,8"], GOOD), (["--grid", "tokens=4", "--grid", "tokens=8"], GOOD),
                               (["--grid", "batch=1,2"], GOOD), (["--grid", "tokens"], BAD), (["--grid", "nope=1"], BAD),
                               (["--grid", "tokens=0"], BAD), (["--grid", "tokens="], BAD), (["--grid", "batch=x"], BAD),
                               (["--grid", "tokens=4,99999999999999999999999"], BAD)]))
        first = "tokens=4" if "tokens" in grid[-1] else "batch=1"  # labels: every grid key, in order
        baseline, ok0 = draw(one([([], GOOD)] * 3 + [(["--baseline", f"{first},in_dim=8,out_dim=8"], GOOD),
                                                     (["--baseline", "nope"], BAD)]))
        opts, ok = draw(common_options())
        pool, ok3 = draw(one(POOL))
        opts, ok = opts + pool, ok and ok3
        out, ok2, expected = draw(one(OUTPUTS + [(("--plot", f"{D}/p.png"), GOOD, ("p.png",)), (("--plot", ""), BAD, ()),
                                                  (("--plot", "-"), BAD, ())]))
        return (["compare", "linear"] + grid + ["--grid", "in_dim=8", "--grid", "out_dim=8"]
                + baseline + opts + list(out), good and ok0 and ok and ok2, setup, expected, plugin)
    if command == "profile":
        text, good = draw(profile())
        out, ok2, expected = draw(one(OUTPUTS[:6] + OUTPUTS[6:9]))
        setup.append(lambda d: (d / "p.yaml").write_bytes(text))
        return ["compare", f"{D}/p.yaml", *out], good and ok2, setup, expected, plugin
    if command == "checkpoint":
        kind, good = draw(one(CHECKPOINTS))
        opts, ok = draw(common_options(only={"--batch", "--seed"}))
        setup.append(lambda d: None)
        return (["run", "linear", *SMALL["linear"], "--pretrained", f"@ckpt:{kind}", *opts, "--min-time", "0.01",
                 "--warmup", "0"], good and ok, setup, expected, plugin)
    if command == "mamba-checkpoint":
        config, good = draw(one(MAMBA_CONFIGS))
        setup.append(lambda d: mamba_checkpoint(config, d))
        return (["run", "mamba-lm", "--seq-len", "8", "--scan-backend", "ref", "--conv-backend", "ref",
                 "--pretrained", f"{D}/mamba", "--device", "cpu", "--min-time", "0.01", "--warmup", "0"],
                good, setup, expected, plugin)
    if command == "list":
        pattern, good = draw(one([([], GOOD), (["lin*"], GOOD), (["zzz*"], BAD), (["["], BAD)]))
        return ["list", *pattern], good, setup, expected, plugin
    if command == "env":
        opts, good = draw(common_options(only={"--device"}))
        return ["env", *opts], good, setup, expected, plugin
    if command == "breakdown":
        args, good = draw(component_args())
        extra, ok = draw(one([([], GOOD), (["--depth", "1", "--table"], GOOD), (["--kernels", "2"], GOOD),
                              (["--depth", "-1"], BAD), (["--kernels", "x"], BAD)]))
        opts, ok2 = draw(common_options(only={"--batch", "--dtype", "--device", "--seed"}))
        return ["breakdown", *args, *extra, *opts], good and ok and ok2, setup, expected, plugin
    if command == "roofline":
        doc, good = draw(one(RECORDS))
        setup.append(lambda d: (d / "r.json").write_text(json.dumps(doc)))
        out, ok = draw(one([((f"--plot", f"{D}/roof.png"), GOOD), (("--plot", ""), BAD), (("--plot", D), BAD),
                            (("--plot", f"{D}/roof.bogus"), BAD)]))
        kind, ok2 = draw(one(INPUT_FILES[:1] * 4 + INPUT_FILES[1:-1]))
        if kind != "r.json":
            setup.append(lambda d: input_file(kind, d, doc))
            return (["roofline", "--from-json", kind if kind.startswith("/") else f"{D}/{kind}", *out], BAD, setup, (),
                    plugin)
        return ["roofline", "--from-json", f"{D}/r.json", *out], good and ok, setup, ("roof.png",) if good and ok else (), plugin
    if command == "diff":
        pieces = [draw(one(DIFF_PIECES)) for _ in range(2)]
        files = [draw(one(INPUT_FILES[:1] * 6 + INPUT_FILES)) for _ in range(2)]
        opts, ok = draw(one([([], GOOD)] * 4 + [(["--threshold", "5%"], GOOD), (["--seed", "7"], GOOD),
                                                (["--json", f"{D}/d.json"], GOOD), (["--threshold", "nan"], BAD),
                                                (["--threshold", "150%"], BAD), (["--seed", "18446744073709551616"], BAD),
                                                (["--seed", "-1"], BAD), (["--json", ""], BAD)]))
        good = ok and all(g for _, g in pieces) and all(g for _, g in files)
        paths = []
        for i, ((changes, _), (kind, _)) in enumerate(zip(pieces, files)):
            doc = {"effprof": {}, "records": [{**DIFF_RECORD, **changes}]}
            sub = f"side{i}"
            setup.append(lambda d, sub=sub, kind=kind, doc=doc: ((d / sub).mkdir(), input_file(kind, d / sub, doc)))
            paths.append(kind if kind.startswith("/") or not kind else f"{D}/{sub}/{kind}")
        return ["diff", *paths, *opts], good, setup, ("d.json",) if good and "--json" in opts else (), plugin
    if command == "quality":
        extra, good = draw(one([([], GOOD), (["--lr", "1e-2"], GOOD), (["--lr", "inf"], BAD), (["--lr", "nan"], BAD),
                                (["--seed", "-1"], BAD), (["--steps", "1000000000"], BAD), (["--device", "meta"], BAD),
                                (["--features", "/dev/zero"], BAD), (["--samples", "99999999999"], BAD)]))
        setup.append(lambda d: (d / "q.yaml").write_text("title: q\nrows:\n  - component: linear\n"))
        return ["quality", "projectors", *QUALITY_TINY, *extra], good, setup, expected, plugin
    if command == "eval":
        kind, good = draw(one([("good", GOOD), ("bomb", BAD), ("latin-map", BAD), ("fifo-map", BAD), ("proc", BAD),
                               ("empty-pretrained", BAD), ("depths", BAD)]))
        setup.append(lambda d: image_folder(d, bomb=kind == "bomb"))
        args = [*EVAL_TINY, "--data", "/proc" if kind == "proc" else f"{D}/data"]
        if kind == "latin-map":
            setup.append(lambda d: (d / "map.txt").write_bytes(b"a 0\n\xff b 1\n"))
            args += ["--class-map", f"{D}/map.txt"]
        elif kind == "fifo-map":
            setup.append(lambda d: os.mkfifo(d / "map.txt"))
            args += ["--class-map", f"{D}/map.txt"]
        elif kind == "empty-pretrained":
            args += ["--pretrained", ""]
        elif kind == "depths":  # a size no run finishes building
            args = ["vmamba", "--depths", "99999,1,1,1", *args[1:]]
        return ["eval", *args], good, setup, expected, plugin
    if command == "estimate":
        extra, good = draw(one([([], GOOD), (["--gpu", "H100"], GOOD), (["--gpu", ""], BAD), (["--gpu", "XYZ"], BAD),
                                (["--prompt-tokens", "0"], BAD)]))
        return ["estimate", "llava", "--preset", "tiny", *extra], good, setup, expected, plugin
    if command == "tp":  # absurd degrees: refused before any rank starts (test_bad_input_2 counts the processes)
        tp, good = draw(one([("1", GOOD), (str(max(64, 2 * (os.cpu_count() or 1))), BAD), ("1000", BAD),
                             ("99999999999999999999", BAD), ("0", BAD), ("1,99999", BAD)]))
        cover, ok = draw(one([([], GOOD), (["--min-flop-coverage", "0.5"], GOOD), (["--min-flop-coverage", "nan"], BAD),
                              (["--min-flop-coverage", "inf"], BAD), (["--min-flop-coverage", "-1"], BAD),
                              (["--min-flop-coverage", "1.5"], BAD)]))
        return (["run", "transformer-lm", "--n-layer", "1", "--d-model", "64", "--seq-len", "8", "--tp", tp, *cover, "--device", "cpu", "--min-time",
                 "0.01", "--warmup", "0"], good and ok, setup, expected, plugin)
    if command == "calibrate":  # measures GPU ceilings: refused on a CPU machine
        return ["calibrate", "--device", "cpu"], BAD, setup, expected, plugin
    if command == "plugin":
        spec = draw(st.sampled_from(["fz_raises", "fz_syntax", "fz_dup", "fz_unit", ".fz_relative", "fz_exit"]))
        return ["list"], BAD, setup, expected, spec
    return [], GOOD, setup, expected, plugin  # no command: the help


PLUGINS = {"fz_raises": "raise RuntimeError('boom at import')\n", "fz_syntax": "def f(:\n",
           "fz_dup": "from effprof.core.registry import register_component\n@register_component('linear', unit='tok')\n"
                     "def f(ctx): pass\n",
           "fz_unit": "from effprof.core.registry import register_component\n@register_component('fz-px', unit='px')\n"
                      "def f(ctx): pass\n",
           "fz_exit": "import sys\nsys.exit(3)\n"}


def run_case(argv, folder: Path, plugin, monkeypatch):
    """Run one invocation in `folder`; return (exit code, stdout, stderr, seconds)."""
    from effprof.core import registry
    from effprof.core.plugins import load_plugins

    argv = [a.replace(D, str(folder)) for a in argv]
    for i, a in enumerate(argv):
        if a.startswith("@ckpt:"):
            argv[i] = checkpoint_files(a[len("@ckpt:"):], folder)
    out, err = io.StringIO(), io.StringIO()
    registry.list_components()
    saved = list(registry.PLUGIN_ERRORS)
    if plugin:
        for name, text in PLUGINS.items():
            (folder / f"{name}.py").write_text(text)
        monkeypatch.syspath_prepend(str(folder))
        registry.PLUGIN_ERRORS[:] = load_plugins(plugin, registry._REGISTRY)
    start, cwd = time.perf_counter(), os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(cwd)
        registry.PLUGIN_ERRORS[:] = saved
    return argv, code, out.getvalue(), err.getvalue(), time.perf_counter() - start


def check(argv, good, expected, code, out, err, folder: Path) -> list[str]:
    """What must hold for one invocation; returns the failures (empty when it held)."""
    problems = []
    if "Traceback" in out + err:
        problems.append("a traceback was printed")
    if code == 3:
        problems.append("internal error (exit 3)")
    lines = [line for line in err.splitlines() if line.strip()]
    if good:
        if code != 0:
            problems.append(f"good input exited {code}")
        for name in expected:
            if not (folder / name).exists():
                problems.append(f"{name} was not written")
    else:
        if code == 0:
            problems.append("bad input exited 0")
        errors = [line for line in lines if line.startswith("effprof: error:")]
        if len(errors) != 1 or len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr, {len(errors)} of them errors (want exactly one)")
    for path in folder.rglob("*"):
        if path.name.startswith(".effprof-"):
            problems.append(f"temporary file left: {path.name}")
        elif path.suffix == ".json" and path.name in ("o.json",):
            try:
                json.loads(path.read_text())
            except ValueError:
                problems.append(f"{path.name} is not valid JSON (half-written?)")
        elif path.suffix == ".csv" and path.name == "o.csv":
            rows = list(csv.DictReader(path.open()))
            if not rows or any(None in row for row in rows):
                problems.append(f"{path.name} is not a complete CSV")
    if (folder / "PWNED").exists():
        problems.append("code ran from a pickle")
    return problems


def record(failure: dict) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("a") as fh:
        fh.write(json.dumps(failure) + "\n")


@pytest.mark.parametrize("command", list(BUDGET))
def test_fuzz_every_command_with_bad_and_good_input(command, tmp_path, monkeypatch, run_slow):
    tally = []
    examples = int(EXAMPLES) if EXAMPLES else (140 if run_slow else 70)

    @settings(max_examples=max(1, BUDGET[command] * examples // 140), deadline=None, database=None,
              derandomize=SEED == 0, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=invocation(command))
    def fuzz(case):
        argv, good, setup, expected, plugin = case
        folder = tmp_path / f"case{len(tally)}"
        folder.mkdir()
        for step in setup:
            step(folder)
        with monkeypatch.context() as patch:
            argv, code, out, err, seconds = run_case(argv, folder, plugin, patch)
        tally.append((command, good, code, round(seconds, 3)))
        problems = check(argv, good, expected, code, out, err, folder)
        if problems:
            failure = {"seed": SEED, "command": command, "argv": argv, "good": good, "plugin": plugin, "exit": code,
                       "problems": problems, "files": sorted(p.name for p in folder.iterdir()),
                       "stderr": err[-2000:], "stdout": out[-500:]}
            record(failure)
            raise AssertionError(json.dumps(failure, indent=1))

    (fuzz if SEED == 0 else hseed(SEED)(fuzz))()
    assert tally  # the command was driven
    if os.environ.get("EFFPROF_FUZZ_VERBOSE"):
        for row in tally:
            print(*row)
