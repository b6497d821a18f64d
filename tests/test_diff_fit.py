"""`effprof diff` (bootstrap CI of the ratio of medians, verdicts, exit codes) and `compare --fit`."""
import json
import math

import numpy as np
import pytest

from effprof.analysis.diff import bootstrap_ratio_ci, diff_records
from effprof.analysis.fit import fit_power_law, fit_records, t_quantile_975
from effprof.cli.main import main


def _record(label, samples, **extra):
    r = {"label": label, "component": "linear", "param_tokens": 16, "params": "tokens=16", "batch": 1,
         "dtype": "fp32", "exec_mode": "eager", "timing_mode": "warm", "status": "ok",
         "latency_ms_median": float(np.median(samples)), "latency_samples_ms": [float(x) for x in samples],
         "device_name": "NVIDIA H200", "driver_version": "570.86.15", "torch_version": "2.11.0"}
    r.update(extra)
    return r


def _samples(seed, n=60, scale=1.0, cv=0.02):
    return scale * (1 + cv * np.random.default_rng(seed).standard_normal(n))


def _write(path, records):
    path.write_text(json.dumps({"effprof": {}, "records": records}))
    return str(path)


def test_planted_slowdown_is_significant_and_a_rerun_is_not():
    base = [_record("a", _samples(1))]
    slower = diff_records(base, [_record("a", _samples(2, scale=1.10))], threshold=0.03)["rows"][0]
    assert slower["verdict"] == "slower" and slower["ratio_ci95_low"] > 1.03
    assert slower["ratio"] == pytest.approx(1.10, abs=0.02)
    rerun = diff_records(base, [_record("a", _samples(3))], threshold=0.03)["rows"][0]
    assert rerun["verdict"] == "no significant change"
    assert rerun["ratio_ci95_low"] < 1 < rerun["ratio_ci95_high"]
    faster = diff_records(base, [_record("a", _samples(4, scale=0.85))])["rows"][0]
    assert faster["verdict"] == "faster" and faster["ratio_ci95_high"] < 0.97


def test_bootstrap_interval_matches_the_asymptotic_width_of_a_median_ratio():
    # For normal samples the median's standard error is sqrt(pi/2)·sigma/sqrt(n); the ratio of two independent
    # medians near 1 has standard error sqrt(2) times that, so the 95% interval is ±1.96 of it.
    sigma, n = 0.02, 400
    ratio, low, high = bootstrap_ratio_ci(_samples(5, n, cv=sigma), _samples(6, n, cv=sigma), n_boot=4000)
    expected_half = 1.96 * math.sqrt(2) * math.sqrt(math.pi / 2) * sigma / math.sqrt(n)
    assert (high - low) / 2 == pytest.approx(expected_half, rel=0.25)
    assert bootstrap_ratio_ci([1.0, 2.0], [2.0, 4.0]) [0] == pytest.approx(2.0)
    assert bootstrap_ratio_ci(list(_samples(1)), list(_samples(2)), seed=7) == \
        bootstrap_ratio_ci(list(_samples(1)), list(_samples(2)), seed=7)  # seeded: reproducible


def test_rows_match_by_component_and_parameters_and_environment_differences_warn():
    base = [_record("a", _samples(1)), _record("b", _samples(2), param_tokens=32), _record("gone", _samples(3),
                                                                                            param_tokens=64)]
    new = [_record("b renamed", _samples(4), param_tokens=32, driver_version="580.1"),
           _record("a", _samples(5)), _record("extra", _samples(6), param_tokens=128),
           {**_record("gone", _samples(3), param_tokens=64), "status": "error", "latency_ms_median": None}]
    result = diff_records(base, new)
    assert [(r["label"], r.get("new_label")) for r in result["rows"]] == [("a", None), ("b", "b renamed")]
    assert result["only_base"] == ["gone"] and result["only_new"] == ["extra"] and result["now_failing"] == ["gone"]
    assert len(result["warnings"]) == 1 and "driver differs" in result["warnings"][0]
    old = {k: v for k, v in _record("a", _samples(1)).items() if k != "latency_samples_ms"}
    assert diff_records([old], [old])["rows"][0]["verdict"] == "no samples"


def test_diff_cli_exit_codes(tmp_path, capsys):
    base = _write(tmp_path / "base.json", [_record("a", _samples(1))])
    same = _write(tmp_path / "same.json", [_record("a", _samples(3))])
    slow = _write(tmp_path / "slow.json", [_record("a", _samples(2, scale=1.10))])
    other = _write(tmp_path / "other.json", [_record("z", _samples(2), component="mlp")])
    assert main(["diff", base, same, "--fail-on-regression"]) == 0
    assert "no significant change" in capsys.readouterr().out
    assert main(["diff", base, slow]) == 0  # a slowdown without the gate is reported, not failed
    assert main(["diff", base, slow, "--fail-on-regression", "--json", str(tmp_path / "d.json")]) == 1
    assert "regression: a" in capsys.readouterr().out
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["rows"][0]["verdict"] == "slower"
    assert main(["diff", base, slow, "--fail-on-regression", "--threshold", "15%"]) == 0  # 10% is within 15%
    for argv, says in ((["diff", base, other], "no row"), (["diff", base, str(tmp_path / "nope.json")], "cannot read"),
                       (["diff", base, same, "--threshold", "abc"], "--threshold")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and "\n" not in err


def test_t_quantile_against_scipy_and_the_table():
    assert t_quantile_975(10) == pytest.approx(2.228, abs=1e-3)
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 3, 29, 31, 60, 200):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)


def test_fit_recovers_exponents_one_and_two_from_noisy_latencies():
    rng = np.random.default_rng(0)
    records = []
    for component, k in (("mamba-lm", 1.0), ("transformer-lm", 2.0)):
        for L in (512, 1024, 2048, 4096, 8192, 16384):
            noise = math.exp(0.03 * rng.standard_normal())
            records.append({"component": component, "label": f"{component} {L}", "status": "ok", "batch": 1,
                            "param_seq_len": L, "param_preset": "130m", "latency_ms_median": 1e-3 * L**k * noise,
                            "gflops": 0.5 * L, "peak_mem_mib": None})
    fits = {(f["series"], f["metric"]): f for f in fit_records(records, "seq_len")}
    assert set(fits) == {("mamba-lm", "latency"), ("mamba-lm", "GFLOP"), ("transformer-lm", "latency"),
                         ("transformer-lm", "GFLOP")}
    for series, k in (("mamba-lm", 1.0), ("transformer-lm", 2.0)):
        f = fits[(series, "latency")]
        assert abs(f["exponent"] - k) < 0.05 and f["ci95_low"] < k < f["ci95_high"]
        assert fits[(series, "GFLOP")]["exponent"] == pytest.approx(1.0, abs=1e-12)
    exact = fit_power_law([1, 2], [3, 12])
    assert exact["exponent"] == pytest.approx(2.0) and exact["prefactor"] == pytest.approx(3.0)
    assert exact["ci95_low"] is None


def test_compare_fit_through_the_cli(tmp_path, fast, capsys):
    plot = tmp_path / "fit.png"
    argv = ["compare", "linear", "--grid", "tokens=16,64,256", "--in-dim", "32", "--out-dim", "48", *fast,
            "--fit", "tokens", "--plot", str(plot)]
    if main(argv) == 2 and "--in-dim" in capsys.readouterr().err:  # fixed parameters beside a grid: issue 16 (other helper)
        argv = ["compare", "linear", "--grid", "tokens=16,64,256", *fast, "--fit", "tokens", "--plot", str(plot)]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "GFLOP tokens^1.00 [1.00, 1.00]" in out  # FLOPs = 2·batch·tokens·in·out: exactly linear in tokens
    assert plot.stat().st_size > 1000
    assert main(["compare", "linear", "--grid", "tokens=16", *fast, "--fit", "tokens"]) == 2
    assert "two or more" in capsys.readouterr().err


def test_fit_over_a_range_of_the_parameter():
    from effprof.analysis.fit import parse_fit

    assert parse_fit("seq_len:4096-16384") == ("seq_len", 4096.0, 16384.0)
    assert parse_fit("seq-len:4096-") == ("seq_len", 4096.0, None) and parse_fit("img_size") == ("img_size", None, None)
    # latency = fixed 10 ms + 1e-3·L²: the whole range reads a low exponent, the top of it nearly 2
    records = [{"component": "t", "status": "ok", "param_seq_len": L, "latency_ms_median": 10 + 1e-3 * L**2}
               for L in (16, 32, 64, 1024, 2048, 4096)]
    whole = fit_records(records, "seq_len")[0]
    top = fit_records(records, "seq_len", 1024, None)[0]
    assert whole["exponent"] < 1.5 and top["n"] == 3 and top["x_min"] == 1024
    assert top["exponent"] == pytest.approx(2.0, abs=0.01)
    with pytest.raises(Exception, match="PARAM:LOW-HIGH"):
        parse_fit("seq_len:abc")
