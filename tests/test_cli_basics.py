"""What a new user meets first: -h, --version, a component's own help, grids with fixed parameters, values
that mean what they say, refusals of nonsense, and trust signals in tables and files."""
import json

import pytest
from conftest import needs_interpreter, runs_interpreter_child

from effprof import __version__
from effprof.cli.main import main
from effprof.core.errors import ParamError
from effprof.core.options import RunOptions
from effprof.core.params import Param
from effprof.core.registry import get_component
from effprof.report.files import read_json


def test_h_is_help_and_version_prints_the_version(capsys):
    assert main(["-h"]) == 0
    short = capsys.readouterr().out
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == short and "compare" in short and "--version" in short
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"effprof {__version__}"


def test_run_component_help_shows_its_parameters_and_the_common_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: the help's panel is not wrapped
    assert main(["run", "transformer-lm", "--help"]) == 0
    out = capsys.readouterr().out
    for param in get_component("transformer-lm").params:  # every parameter, its default and range
        assert param.option in out and param.range_text() in out
    assert "130m" in out and "one of prefill, decode" in out
    defaults = RunOptions()
    for flag, value in (("--min-time", defaults.min_time), ("--max-cv", defaults.max_cv),
                        ("--batch", defaults.batch), ("--warmup", defaults.warmup)):
        assert flag in out and f"(default: {value})" in " ".join(out.split())
    assert main(["run", "linear", "-h"]) == 0
    assert "--in-dim" in capsys.readouterr().out


def test_full_is_a_string_except_where_a_param_declares_it():
    mode = Param("mode", str, "fast", "a mode", choices=("fast", "full"))
    assert mode.parse("full") == "full"  # once parsed as None for every str parameter
    plain = Param("kind", str, "x", "anything")
    assert plain.parse("full") == "full" and plain.parse("Full") == "Full"
    rank = {p.name: p for p in get_component("ssm-conv").params}["rank"]
    assert rank.parse("full") is None and rank.parse("none") is None and rank.parse("4") == 4
    assert "none/full" in rank.range_text()
    with pytest.raises(TypeError):
        Param("bad", int, 1, "aliases without optional", none_aliases=("all",))


def test_transformer_lm_refuses_a_width_its_heads_cannot_divide(capsys):
    from effprof.components.mamba import transformer_shape

    assert transformer_shape("130m", None, None) == (768, 12, 12)
    assert transformer_shape("130m", 256, None) == (256, 12, 4)      # d_model / 64 heads
    assert transformer_shape("130m", 96, 3) == (96, 12, 3)
    with pytest.raises(ParamError, match="not divisible by 3 attention heads"):
        transformer_shape("130m", 200, None)                          # 200 // 64 = 3 heads of 66.7
    with pytest.raises(ParamError, match="not divisible by 5"):
        transformer_shape("130m", None, 5)                            # 768 / 5
    assert main(["run", "transformer-lm", "--d-model", "200", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not divisible by 3 attention heads" in err and "\n" not in err


def test_compare_grid_takes_fixed_component_parameters(tmp_path, fast):
    out = tmp_path / "g.json"
    assert main(["compare", "linear", "--grid", "tokens=4,8", "--in-dim", "16", "--out-dim=24", *fast,
                 "--json", str(out)]) == 0
    rows = read_json(out)
    assert [(r["param_tokens"], r["param_in_dim"], r["param_out_dim"]) for r in rows] == [(4, 16, 24), (8, 16, 24)]
    assert [r["gflops"] for r in rows] == pytest.approx([2 * t * 16 * 24 / 1e9 for t in (4, 8)])


@pytest.mark.parametrize("argv, says", [
    (["compare", "linear", "--grid", "tokens=4,8", "--tokens", "4"], "both a fixed parameter and a --grid axis"),
    (["compare", "linear", "--grid", "tokens=4", "--in-dim", "0"], "outside the allowed range"),
    (["compare", "linear", "--grid", "tokens=4", "--bogus", "1"], "unknown option '--bogus'"),
    (["compare", "projectors", "--bogus", "4"], "unknown option '--bogus'"),
    (["compare", "projectors", "--tokens", "0"], "outside the allowed range"),
])
def test_compare_refuses_fixed_parameters_it_cannot_use(argv, says, capsys, fast):
    assert main(argv + fast) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


@runs_interpreter_child
def test_triton_tests_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) == 1


@needs_interpreter
def test_a_triton_kernel_under_triton_interpret_is_refused_not_timed(tmp_path, capfd):
    out = tmp_path / "r.json"
    assert main(["run", "mamba", "--scan-backend", "triton", "--device", "cpu", "--d-model", "8", "--seq-len", "8",
                 "--json", str(out)]) == 2
    err = capfd.readouterr().err
    assert "TRITON_INTERPRET=1" in err and "not a benchmark" in err
    assert err.strip().count("\n") == 0 and not out.exists()  # one line, and nothing timed or written


def test_records_carry_what_reproduces_them_and_load_into_pandas_in_one_call(tmp_path, fast):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "r.json"
    argv = ["compare", "linear", "--grid", "tokens=4,8", "--in-dim", "16", "--out-dim", "24", *fast,
            "--seed", "3", "--json", str(out)]
    assert main(argv) == 0
    with open(out) as fh:
        df = pd.json_normalize(json.load(fh)["records"])  # the one call the metadata documents
    assert len(df) == 2 and df["latency_ms_median"].gt(0).all()
    meta = json.loads(out.read_text())["effprof"]
    assert meta["command_line"] == "effprof " + " ".join(argv)
    assert meta["load_with"].startswith("pandas: pd.json_normalize")
    assert "fraction" in meta["conventions"]["latency_cv"] and "MiB" in meta["conventions"]["memory"]
    with open("/proc/cpuinfo") as fh:
        models = {line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")}
    row = df.iloc[0]
    if models:
        assert row["device_name"] == row["cpu_model"] == meta["cpu_model"] and row["cpu_model"] in models
    assert row["device_name"] != "x86_64"
    assert (row["seed"], row["min_time_s"], row["warmup_s"], row["input_sets"]) == (3, 0.02, 0.0, 1)
    assert row["torch_num_threads"] >= 1 and row["command_line"] == meta["command_line"]
    assert row["timing_stop"] in ("steady", "precise", "min-time", "cap", "max-time")
    assert not [c for c in df.columns if c.endswith("_mb") or "mbytes" in c]  # MiB everywhere


def test_tables_use_plain_numbers_and_mark_unsteady_rows_and_their_ratios():
    from rich.console import Console

    from effprof.report.table import plain, print_records
    from effprof.runner import add_ratios

    assert [plain(v) for v in (1.23e-5, 0.000983, 12.345, 1234.5)] == ["0.0000123", "0.000983", "12.3", "1,234"]
    steady = {"label": "steady", "status": "ok", "latency_ms_median": 0.1, "latency_ms_p10": 0.099,
              "latency_ms_p90": 0.101, "latency_cv": 0.004, "latency_unsteady": False, "gflops": 0.0000983}
    noisy = {**steady, "label": "noisy", "latency_ms_median": 0.2, "latency_cv": 0.3, "latency_unsteady": True}
    records = [steady, noisy]
    add_ratios(records)
    assert records[0]["speedup_unsteady"] is False and records[1]["speedup_unsteady"] is True
    console = Console(width=250, record=True)
    print_records(records, console=console, columns="full")
    text = console.export_text()
    assert "e-0" not in text and "0.0000983" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip().startswith(("noisy", "steady"))}
    assert rows["noisy"].count("!") == 3  # latency, CV and speedup
    assert "!" not in rows["steady"]
    assert "unsteady (CV > 0.05): noisy" in text and "CV = std/mean of the samples, a fraction" in text
