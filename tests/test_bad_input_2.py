"""Bad input, second round (issue 28): the newer commands (diff, eval, quality, roofline --from-json, estimate),
factories in user files, `--tp`, and sizes no run can finish. Each invocation ends in one line on stderr and a
non-zero exit (or, inside a comparison, a failed row with its reason), within a bounded time. In-process
through `effprof.cli.main` unless a real process is the point (a crash of the interpreter)."""
import gc
import json
import math
import multiprocessing.process
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from effprof.analysis.diff import INCONCLUSIVE, NOISY_FACTOR, diff_records, verdict
from effprof.cli.main import main
from effprof.core.params import Param
from effprof.core.registry import Built, register_component
from effprof.modules.preprocess import Preprocess
from effprof.report.files import read_json
from test_bad_input import refused as refused_once  # the first round's check, one place

FAST = ["--device", "cpu", "--min-time", "0.01", "--warmup", "0"]
TINY = ["--tokens", "4", "--in-dim", "8", "--out-dim", "8"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 0.97, 1.0, 1.01]


def refused(argv, capsys, code=2, says="", within_s=30.0):
    """test_bad_input's check (one line, exit `code`, no traceback), answered within `within_s` seconds."""
    return refused_once(argv, capsys, code, says, within_s)


def records_file(path, **changes):
    record = {"label": "a", "component": "linear", "status": "ok", "batch": 1, "dtype": "fp32",
              "latency_ms_median": 1.0, "latency_samples_ms": list(SAMPLES)}
    record.update(changes)
    path.write_text(json.dumps({"effprof": {}, "records": [record]}))
    return str(path)


# ---- diff and roofline --from-json: records checked against their declared columns --------------------

BAD_RECORDS = [
    ({"latency_samples_ms": [[1.0], [2.0]]}, "latency_samples_ms is [[1.0], [2.0]], holds [1.0]"),
    ({"latency_samples_ms": {"a": 1}}, "latency_samples_ms is {'a': 1}, not a list of numbers"),
    ({"latency_samples_ms": 3.0}, "latency_samples_ms is 3.0, not a list of numbers"),
    ({"component": ["linear"]}, "component is ['linear'], not text"),
    ({"latency_ms_median": 0, "latency_samples_ms": None}, "latency_ms_median is 0, not positive"),
    ({"latency_ms_median": -2.0}, "latency_ms_median is -2.0, not positive"),
    ({"latency_ms_median": "fast"}, "latency_ms_median is 'fast', not a finite number"),
    ({"latency_ms_median": True}, "latency_ms_median is True, not a finite number"),
    ({"latency_samples_ms": [float("nan")] * 10}, "holds nan at position 0, not a finite number"),
    ({"latency_samples_ms": [1.0, -1.0]}, "holds -1.0 at position 1, not positive"),
    ({"latency_samples_ms": [1.0, 0]}, "holds 0 at position 1, not positive"),
    ({"latency_samples_ms": ["1"] * 3}, "holds '1' at position 0"),
    ({"latency_samples_ms": [True] * 3}, "holds True at position 0"),
    ({"latency_samples_ms": [1e300] * 3}, "outside [1e-12, 1e+15]"),
    ({"status": 1}, "status is 1, not one of ok, error, OOM, refused"),
    ({"status": "fine"}, "status is 'fine', not one of"),
    ({"batch": 0}, "batch is 0, not an integer of at least 1"),
    ({"param_tokens": [4, [5]]}, "param_tokens is [4, [5]], not a single value"),
    ({"extra": [[[[1]]]]}, "nested deeper than a record holds"),
]


@pytest.mark.parametrize("changes, says", BAD_RECORDS)
def test_diff_refuses_records_of_the_wrong_shape_naming_record_and_field(changes, says, tmp_path, capsys):
    base = records_file(tmp_path / "base.json")
    bad = records_file(tmp_path / "new.json", **changes)
    line = refused(["diff", base, bad], capsys, says=says)
    assert "record 1:" in line and "new.json" in line


@pytest.mark.parametrize("doc, says", [
    ([1, 2], "not effprof records"), ({"records": [1, 2]}, "record 1 is a int"), ({"records": None}, "not effprof"),
    ({"records": ["a"]}, "record 1 is a str"),
])
def test_diff_refuses_documents_that_are_not_records(doc, says, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    refused(["diff", records_file(tmp_path / "base.json"), str(tmp_path / "bad.json")], capsys, says=says)


def test_diff_of_records_without_medians_or_samples_is_refused(tmp_path, capsys):
    base = records_file(tmp_path / "base.json")
    missing = records_file(tmp_path / "new.json", latency_ms_median=None, latency_samples_ms=None)
    refused(["diff", base, missing], capsys, says="no row of")


def test_diff_of_a_csv_says_it_needs_the_json_records(tmp_path, capsys):
    csv = tmp_path / "a.csv"
    csv.write_text("label,component,status,latency_ms_median\na,linear,ok,1.0\n")
    base = records_file(tmp_path / "b.json")
    for argv in (["diff", str(csv), base], ["diff", base, str(csv)]):
        line = refused(argv, capsys, says="diff needs the JSON records written with --json")
        assert "a CSV has no timing samples" in line


def _fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("command", ["diff", "roofline"])
def test_records_files_that_never_end_or_nest_too_deep_are_refused(command, tmp_path, capsys, monkeypatch):
    if command == "roofline":
        pytest.importorskip("matplotlib")
    base = records_file(tmp_path / "base.json")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"records": [{"label": "x" * 4096}]}))

    def argv(path):
        if command == "diff":
            return ["diff", base, path]
        return ["roofline", "--from-json", path, "--plot", str(tmp_path / "r.png")]

    refused(argv(_fifo(tmp_path)), capsys, says="is a FIFO; name a regular file", within_s=10)
    refused(argv("/dev/zero"), capsys, says="is a device", within_s=10)
    refused(argv("/proc/self/status"), capsys, says="kernel pseudo-file", within_s=10)
    refused(argv(str(tmp_path)), capsys, says="is a directory")
    refused(argv(str(deep)), capsys, says="nested deeper than a records file can be", within_s=10)
    monkeypatch.setattr("effprof.core.limits.MAX_RECORDS_BYTES", 1024)
    refused(argv(str(big)), capsys, says="more than effprof reads from such a file")


def test_roofline_refuses_values_that_overflow_a_plot_and_unknown_image_formats(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    huge = records_file(tmp_path / "h.json", gflops=1e308, tflops_per_s=1e308, peak_tflops=1e308,
                        peak_gb_per_s=1e-300, arithmetic_intensity_flop_per_byte=1e308)
    refused(["roofline", "--from-json", huge, "--plot", str(tmp_path / "r.png")], capsys, says="outside [1e-12, 1e+15]")
    refused(["roofline", "--from-json", huge, "--plot", str(tmp_path / "x.bogus")], capsys,
            says="effprof draws PNG images; name a .png file (not .bogus)")
    assert not (tmp_path / "x.bogus").exists()


def test_diff_options_empty_json_and_a_seed_past_64_bits_are_refused(tmp_path, capsys):
    base = records_file(tmp_path / "base.json")
    refused(["diff", base, base, "--json", ""], capsys, says="--json: the path is empty")
    refused(["diff", base, base, "--seed", "18446744073709551616"], capsys, says="--seed: 18446744073709551616 is outside")
    refused(["diff", base, base, "--seed", "-1"], capsys, says="--seed: -1 is outside")


# ---- diff: an interval too wide to bear a verdict -------------------------------------------------------

def test_the_inconclusive_rule_at_its_edges():
    t = 0.03
    width = max(NOISY_FACTOR, ((1 + t) / (1 - t)) ** 2)  # the rule in effprof.analysis.diff's docstring
    assert verdict(0.98, 880.0, t) == INCONCLUSIVE                  # the 606x "no significant change"
    assert verdict(0.75, 0.75 * width * 0.999, t) == "no significant change"
    assert verdict(0.75, 0.75 * width * 1.001, t) == INCONCLUSIVE
    assert verdict(1.2, 500.0, t) == "slower"                        # wide, but the whole interval is above
    assert verdict(0.001, 0.9, t) == "faster"
    assert verdict(0.99, 1.02, t) == "no significant change"
    # at a large threshold the band (1 - t, 1 + t) itself is wider than a factor 2: the rule follows it
    assert verdict(0.5, 1.9, 0.4) == "no significant change" and verdict(0.1, 2.0, 0.4) == INCONCLUSIVE


def test_a_very_noisy_change_reads_inconclusive_and_does_not_fail_the_gate(tmp_path, capsys):
    steady = [1.0 + 0.01 * (i % 3) for i in range(20)]
    noisy = [1.0 if i % 2 else 1000.0 for i in range(21)]  # a bimodal run: median ~1000, interval ~[1, 1000]
    result = diff_records([{"component": "linear", "latency_ms_median": 1.0, "latency_samples_ms": steady}],
                          [{"component": "linear", "latency_ms_median": 1.0, "latency_samples_ms": noisy}])
    (row,) = result["rows"]
    assert row["ratio_ci95_high"] / row["ratio_ci95_low"] > NOISY_FACTOR and row["verdict"] == INCONCLUSIVE
    base = records_file(tmp_path / "base.json", latency_samples_ms=steady)
    new = records_file(tmp_path / "new.json", latency_samples_ms=noisy)
    assert main(["diff", base, new, "--fail-on-regression"]) == 0
    out, _ = capsys.readouterr()
    assert "inconclusive" in out and "measure again" in out


# ---- eval ----------------------------------------------------------------------------------------------

class _MeanColour(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 2)
        self.preprocess = Preprocess(8, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def forward(self, images):
        return self.head(images.mean(dim=(2, 3)))


@register_component("test-bi2-classifier", unit="img", family="vision", params=[Param("side", int, 8, "side", low=1,
                                                                                       high=64)])
def _classifier(ctx, side):
    """Two classes from the mean colour."""
    return Built(_MeanColour().to(ctx.device, ctx.dtype),
                 lambda b: (torch.rand(b, 3, side, side, device=ctx.device, dtype=ctx.dtype),), "img")


def _folder(root, sizes=((10, 10), (10, 10))):
    from PIL import Image

    for name, size in zip("ab", sizes):
        (root / name).mkdir(parents=True)
        Image.new("RGB", size, (200, 10, 10)).save(root / name / "0.png")
    return root


EVAL = ["eval", "test-bi2-classifier", "--device", "cpu", "--batch", "2", "--min-time", "0.01", "--warmup", "0"]


@pytest.mark.parametrize("side, how", [(12, "more than Pillow decodes safely"), (16, "decompression bomb")])
def test_eval_refuses_a_decompression_bomb_in_one_line(side, how, tmp_path, capsys, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image

    data = _folder(tmp_path / "d", sizes=((10, 10), (side, side)))
    # MAX_IMAGE_PIXELS 100: 144 pixels is past it (Pillow warns), 256 past twice it (Pillow raises)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning that leaked would fail here
        refused([*EVAL, "--data", str(data)], capsys, says=how)


def test_eval_refuses_bad_class_maps_folders_and_paths(tmp_path, capsys, monkeypatch):
    pytest.importorskip("PIL")
    data = _folder(tmp_path / "d")
    latin = tmp_path / "map.txt"
    latin.write_bytes(b"a 0\n\xff\xfe b 1\n")
    refused([*EVAL, "--data", str(data), "--class-map", str(latin)], capsys,
            says="not UTF-8 text (byte 0xff at offset 4)")
    refused([*EVAL, "--data", str(data), "--class-map", _fifo(tmp_path)], capsys, says="is a FIFO", within_s=10)
    refused([*EVAL, "--data", "/proc"], capsys, says="a kernel pseudo-file system")
    refused([*EVAL, "--data", str(data), "--pretrained", ""], capsys, says="--pretrained: the path is empty")
    refused([*EVAL, "--data", str(data), "--pretrained", "/dev/zero"], capsys, says="is a device")

    real_iterdir = type(data).iterdir

    def iterdir(self):  # a class folder this user may not list (root ignores chmod, so the error is simulated)
        if self.name == "b":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(type(data), "iterdir", iterdir)
    refused([*EVAL, "--data", str(data)], capsys, says="Permission denied")


# ---- quality -------------------------------------------------------------------------------------------

QUALITY = ["quality", "projectors", "--device", "cpu", "--set", "tokens=4", "--set", "in_dim=8", "--set",
           "out_dim=8", "--steps", "2", "--no-cost", "--samples", "8"]


@pytest.mark.parametrize("extra, says", [
    (["--lr", "inf"], "--lr: inf is not a finite number"), (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr: 0 is outside"), (["--seed", "-1"], "--seed: -1 is outside"),
    (["--steps", "1000000000"], "--steps: 1000000000 is outside [1, 1000000]"),
    (["--samples", "99999999999"], "--samples: 99999999999 is outside"),
])
def test_quality_options_past_what_a_run_can_finish_are_refused(extra, says, capsys):
    refused([*QUALITY, *extra], capsys, says=says, within_s=10)


def test_quality_refuses_meta_and_features_that_are_not_real_numbers(tmp_path, capsys):
    refused(["quality", "projectors", "--device", "meta", "--steps", "2", "--no-cost"], capsys,
            says="not meta", within_s=20)
    torch.save(torch.randn(6, 4, 8, dtype=torch.complex64), tmp_path / "c.pt")
    nan = torch.randn(6, 4, 8)
    nan[0, 0, 0] = math.nan
    torch.save(nan, tmp_path / "n.pt")
    torch.save({"inputs": torch.randn(6, 4, 8), "targets": torch.full((6, 4, 8), math.inf)}, tmp_path / "i.pt")
    refused([*QUALITY, "--features", str(tmp_path / "c.pt")], capsys, says="inputs are complex64; expected real")
    refused([*QUALITY, "--features", str(tmp_path / "n.pt")], capsys, says="inputs hold NaN or infinite values")
    refused([*QUALITY, "--features", str(tmp_path / "i.pt")], capsys, says="targets hold NaN or infinite values")
    refused([*QUALITY, "--features", _fifo(tmp_path)], capsys, says="is a FIFO", within_s=10)


# ---- factories in user files ---------------------------------------------------------------------------

FACTORIES = textwrap.dedent('''
    import sys
    import warnings
    import torch


    def ok(width: int = 4):
        return torch.nn.Linear(width, width)


    def boom(width: int = 4):
        raise ValueError("factory exploded")


    def leaves(width: int = 4):
        sys.exit(0)


    async def asynchronous(width: int = 4):
        return torch.nn.Linear(width, width)


    async def _later():
        return None


    def returns_coroutine(width: int = 4):
        return _later()


    def noisy(width: int = 4):
        warnings.warn("a library's note while building")
        return torch.nn.Linear(width, width)
''')


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "fx.py").write_text(FACTORIES)
    (tmp_path / "exits.py").write_text("import sys\n\nsys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_factory_paths_that_cannot_be_used_are_one_line(factories, capsys):
    refused(["run", "~nosuchuser_effprof/x.py:f", *FAST], capsys, says="no user named 'nosuchuser_effprof'")
    refused(["run", "a" * 300 + ".py:f", *FAST], capsys, says="cannot use that path (File name too long)")
    refused(["run", "exits.py:f", *FAST], capsys, says="it called sys.exit(0) at import (at ")


def test_a_raising_factory_is_the_users_failure_with_file_and_line(factories, capsys):
    line = refused(["run", "fx.py:boom", *FAST], capsys, code=1, says="the factory raised ValueError: factory exploded")
    assert f"{factories / 'fx.py'}:12" in line and "not effprof's" in line and "internal error" not in line


def test_sys_exit_while_building_is_a_failed_row_in_a_comparison(factories, capsys):
    (factories / "p.yaml").write_text("title: exits\nrows:\n  - component: fx.py:ok\n    label: fine\n"
                                      "    params: {input_shape: 1x4}\n  - component: fx.py:leaves\n    label: leaves\n")
    out = factories / "o.json"
    assert main(["compare", "p.yaml", *FAST, "--json", str(out)]) == 1
    fine, leaves = read_json(out)
    assert fine["status"] == "ok" and leaves["status"] == "error"
    assert "the factory called sys.exit(0) while building (at " in leaves["error"]
    capsys.readouterr()  # the comparison's own notes (the host's load) are not the run's
    refused(["run", "fx.py:leaves", *FAST], capsys, code=1, says="called sys.exit(0) while building")


def test_async_factories_and_returned_coroutines_leak_no_warning(factories, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(["run", "fx.py:asynchronous", *FAST], capsys, says="an async function")
        refused(["run", "fx.py:returns_coroutine", *FAST], capsys, says="returned a coroutine")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_library_warnings_while_building_show_only_with_debug(factories):
    for debug in ([], ["--debug"]):
        with warnings.catch_warnings(record=True) as caught:  # what would reach the terminal
            warnings.simplefilter("always")
            assert main(["run", "fx.py:noisy", "--input-shape", "1x4", *FAST, *debug]) == 0
        assert any("a library's note" in str(w.message) for w in caught) == bool(debug)


def test_transformers_config_warnings_show_only_with_debug(tmp_path, capfd):
    pytest.importorskip("transformers")
    for bos, debug in ((1000, []), (1001, ["--debug"])):  # distinct messages: transformers warns once each
        folder = tmp_path / f"m{bos}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({
            "model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "bos_token_id": bos,
            "eos_token_id": 2, "max_position_embeddings": 64}))
        assert main(["run", f"hf:{folder}", "--seq-len", "8", *FAST, *debug]) == 0
        err = capfd.readouterr().err
        assert ("bos_token_id" in err) == bool(debug), err


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "effprof", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_a_segfault_in_a_factory_is_one_line_and_isolate_contains_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "crash.py").write_text("import ctypes\n\n\ndef segv(width: int = 4):\n    ctypes.string_at(0)\n")
    plain = _cli("run", "crash.py:segv", *FAST, cwd=tmp_path)
    lines = [line for line in plain.stderr.splitlines() if line.strip()]
    assert plain.returncode == 128 + 11 and len(lines) == 1, plain.stderr
    assert "SIGSEGV" in lines[0] and "--isolate" in lines[0]
    monkeypatch.chdir(tmp_path)  # --isolate: the crash happens in a worker process, so this one may run it
    refused(["run", "crash.py:segv", *FAST, "--isolate"], capsys, code=1, says="worker died (killed by SIGSEGV")


# ---- sizes no run can finish ---------------------------------------------------------------------------

@register_component("test-bi2-attention", unit="tok", params=[Param("seq_len", int, 16, "tokens", low=1,
                                                                    high=2**24)])
def _attention(ctx, seq_len):
    """One attention call over seq_len tokens, head width 8: 4·L²·8 FLOPs on 3·L·8 numbers of input."""
    layer = torch.nn.Identity()

    def forward(module, inputs):
        return torch.nn.functional.scaled_dot_product_attention(*inputs)

    return Built(layer, lambda b: tuple(torch.randn(b, 1, seq_len, 8, device=ctx.device, dtype=ctx.dtype)
                                        for _ in range(3)), "tok", forward=forward)


def test_a_call_that_cannot_finish_is_refused_from_its_flops_on_meta(capsys):
    # 4 · (2^22)² · 8 FLOPs = 5.6e14: over 120 s even at 250 GFLOP/s on each of this machine's cores... unless
    # it has more than ~18,000 of them; the inputs are 3 x 128 MiB, so memory does not refuse it first
    line = refused(["run", "test-bi2-attention", "--seq-len", str(2**22), *FAST], capsys, says="TFLOP",
                   within_s=20)
    assert "more than the 120 s a call may take" in line
    # a shorter --max-time lowers the bound: 2^18 tokens, 2.2e12 FLOPs, is 4.4 s or more at 0.5 TFLOP/s
    if os.cpu_count() <= 2:
        refused(["run", "test-bi2-attention", "--seq-len", str(2**18), *FAST, "--max-time", "1"], capsys,
                says="more than the 1 s a call may take")
    assert main(["run", "test-bi2-attention", "--seq-len", "64", *FAST]) == 0  # a small one still runs


DECLARED = [
    (["run", "llava", "--preset", "tiny", "--mode", "generate", "--new-tokens", "100000"], "--new-tokens: 100000 is outside"),
    (["run", "llava", "--preset", "tiny", "--mode", "generate", "--new-tokens", "100000", "--device", "meta"],
     "--new-tokens: 100000 is outside"),
    (["run", "vmamba", "--depths", "99999,1,1,1"], "--depths: '99999,1,1,1' is 100,002 blocks in all"),
    (["run", "clip-dual", "--adapt", "lora", "--alpha", "1e30"], "--alpha: 1e+30 is outside"),
]


def test_llava_with_a_million_prompt_tokens_is_refused_before_it_runs(capsys):
    pytest.importorskip("transformers")
    # 512 TFLOP (mostly attention over 10^6 tokens): past 120 s at 250 GFLOP/s per core below ~17 cores
    if os.cpu_count() > 16:
        pytest.skip("enough cores to finish a call in 120 s at their peak")
    refused(["run", "llava", "--preset", "tiny", "--prompt-tokens", "1000000", *FAST], capsys,
            says="TFLOP (FLOP = 2 x MAC, counted on meta)", within_s=60)


@pytest.mark.parametrize("argv, says", DECLARED)
def test_declared_ranges_refuse_sizes_that_never_finish(argv, says, capsys):
    refused([*argv, *FAST] if "--device" not in argv else [*argv, "--min-time", "0.01"], capsys, says=says,
            within_s=20)


# ---- --tp: no process storm ------------------------------------------------------------------------------

@pytest.fixture
def started(monkeypatch):
    """Count every process started (multiprocessing of any context, and subprocess)."""
    count = {"n": 0}
    real_start, real_popen = multiprocessing.process.BaseProcess.start, subprocess.Popen.__init__

    def start(self, *args, **kwargs):
        count["n"] += 1
        return real_start(self, *args, **kwargs)

    def popen(self, *args, **kwargs):
        count["n"] += 1
        return real_popen(self, *args, **kwargs)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    return count


@pytest.mark.parametrize("tp, says", [("64", "--tp: 64 ranks, but this machine has"),
                                      ("1000", "--tp: 1000 ranks, but this machine has"),
                                      ("99999999999999999999", "more ranks than any machine holds"),
                                      ("2,1000", "--tp: 1000 ranks")])
def test_an_absurd_tp_starts_no_process(tp, says, started, capsys):
    if os.cpu_count() >= 64 and tp == "64":
        pytest.skip("this machine has 64 cores")
    refused(["run", "transformer-lm", "--tp", tp, *FAST], capsys, says=says, within_s=20)
    assert started["n"] == 0


def test_a_profile_with_tp_1000_starts_no_process(started, tmp_path, capsys):
    (tmp_path / "tp.yaml").write_text("title: tp\noptions: {tp: 1000, device: cpu}\nrows:\n"
                                      "  - component: transformer-lm\n")
    refused(["compare", str(tmp_path / "tp.yaml"), "--min-time", "0.01"], capsys, says="row 1 (transformer-lm): --tp: 1000")
    assert started["n"] == 0


# ---- values that were accepted -------------------------------------------------------------------------

@pytest.mark.parametrize("value, says", [("nan", "nan is not a finite number"), ("inf", "inf is not a finite number"),
                                         ("-1", "-1 is outside [0, 1]"), ("1.5", "1.5 is outside [0, 1]")])
def test_min_flop_coverage_outside_a_fraction_is_refused(value, says, capsys):
    refused(["run", "linear", *TINY, *FAST, "--min-flop-coverage", value], capsys, says=f"--min-flop-coverage: {says}")
    refused(["compare", "linear", "--grid", "tokens=4", *FAST, "--min-flop-coverage", value], capsys,
            says=f"--min-flop-coverage: {says}")


def test_empty_values_are_refused_not_read_as_defaults(capsys):
    refused(["compare", "linear", "--grid", "tokens=4,8", *FAST, "--fit", ""], capsys, says="--fit '': name a parameter")
    refused(["estimate", "llava", "--gpu", ""], capsys, says="--gpu: empty")


def test_a_checkpoint_of_meta_tensors_claiming_4_tib_is_one_line(tmp_path, capsys):
    path = tmp_path / "huge.pt"
    torch.save({"weight": torch.empty(2**20, 2**20, device="meta"), "bias": torch.empty(2**20, device="meta")}, path)
    refused(["run", "linear", *TINY, *FAST, "--pretrained", str(path)], capsys,
            says="entry 'weight' is a meta tensor (1048576, 1048576) without data")


def test_diff_json_to_standard_output_is_json_alone(tmp_path, capsys):
    base = records_file(tmp_path / "base.json")
    assert main(["diff", base, base, "--json", "-"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out)["rows"][0]["verdict"] == "no significant change"
    assert not (tmp_path / "-").exists() and not os.path.exists("-")
