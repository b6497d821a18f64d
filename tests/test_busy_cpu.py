"""Honest output on a busy CPU (issue 27): the host's load on every CPU row, --threads, ratios too unsteady to
mean anything shown as `~`, every phase in the time-spent line, CPU peak memory below the method's
resolution never printed as a number, and no profiler or deprecation noise."""
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

from effprof.cli.main import main
from effprof.report.files import read_json
from effprof.report.table import footer, records_table
from effprof.runner import Config, RunOptions, add_ratios, measure

LINEAR = ["run", "linear", "--tokens", "8", "--in-dim", "16", "--out-dim", "16"]


def test_every_cpu_row_records_the_host_load_and_its_threads(tmp_path, fast, capsys):
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    assert main([*LINEAR, *fast, "--threads", "1", "--json", str(out)]) == 0
    row = read_json(out)[0]
    assert 0 <= row["host_cpu_busy_pct"] <= 100 and 0 <= row["host_other_busy_pct"] <= row["host_cpu_busy_pct"]
    assert row["host_load_1min"] >= 0 and row["host_cpus"] >= 1
    assert row["torch_num_threads"] == 1 and torch.get_num_threads() == threads  # set for the row, then restored
    assert "host while timing:" in capsys.readouterr().err


def _row(label, median, cv, half=0.01, **extra):
    return {"label": label, "status": "ok", "latency_ms_median": median, "latency_cv": cv,
            "latency_unsteady": cv > 0.05, "latency_ms_ci95_low": median * (1 - half),
            "latency_ms_ci95_high": median * (1 + half), "latency_ms_p10": median, "latency_ms_p90": median, **extra}


def test_a_speedup_between_wild_rows_is_shown_as_tilde_with_the_reason():
    steady = [_row("a", 2.0, 0.01), _row("b", 1.0, 0.01)]
    add_ratios(steady)
    b = steady[1]
    assert b["speedup"] == pytest.approx(2.0) and b["ratio_unreliable"] is False
    assert b["speedup_ci95_low"] < 2.0 < b["speedup_ci95_high"]
    # the reading: a row whose samples disagree by a factor (15.75 ms and 0.013 ms)
    wild = [_row("base", 15.7, 0.02), _row("noisy", 11.6, 1.4, half=0.03), _row("shaky", 10.0, 0.2, half=0.4)]
    add_ratios(wild)
    assert wild[1]["ratio_unreliable"] and "CV 1.40 here" in wild[1]["speedup_note"]
    assert wild[2]["ratio_unreliable"] and "95% interval" in wild[2]["speedup_note"]
    table = records_table(wild, "t", "speedup")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    assert console.export_text().count("~") == 2
    assert any(line.startswith("~ speedup not shown") for line in footer(wild).splitlines())


def test_the_time_spent_line_counts_every_phase():
    rows = [{"label": "a", "phase_build_s": 1.0, "phase_count_s": 2.0, "phase_warmup_s": 0.5, "phase_timing_s": 3.0,
             "phase_passes_s": 4.0, "wall_s": 12.0}]
    line = next(x for x in footer(rows).splitlines() if x.startswith("time spent"))
    assert "passes after timing 4.0 s" in line and "other 1.5 s" in line and "wall 12.0 s" in line


def test_cpu_peak_memory_below_the_resolution_is_not_a_number():
    from effprof.measure.rss import RESOLUTION_BYTES
    from effprof.trackers.memory import MemoryTracker

    tracker = MemoryTracker()
    tracker.peak = SimpleNamespace(method="rss")
    run = SimpleNamespace(device=torch.device("cpu"))
    tracker.mib = 4096 / 2**20  # one page: the 0.00391
    fields = tracker.fields(run)
    assert fields["peak_mem_mib"] is None and fields["peak_mem_below_resolution"] is True
    assert fields["peak_mem_resolution_mib"] == RESOLUTION_BYTES / 2**20
    tracker.mib = 3.0
    assert tracker.fields(run)["peak_mem_mib"] == 3.0
    rows = [_row("a", 1.0, 0.01, peak_mem_mib=2.0), _row("b", 1.0, 0.01, **{**fields})]
    add_ratios(rows)
    assert rows[1]["peak_mem_ratio"] is None  # no ratio of noise


def test_breakdown_uncovered_writes_nothing_to_stderr():
    done = subprocess.run([sys.executable, "-m", "effprof", "breakdown", "mlp", "--tokens", "8", "--in-dim", "16",
                           "--out-dim", "24", "--device", "cpu", "--uncovered"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "FLOP coverage" in done.stdout
    assert done.stderr.strip() == ""


def test_transformer_lm_decode_uses_the_current_cache_argument():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # `past_key_values` is deprecated (gone in 5.40)
        r = measure(Config("transformer-lm", {"d_model": 64, "n_layer": 1, "seq_len": 5, "mode": "decode"},
                           RunOptions(device="cpu", dtype="fp32", min_time=0.01, warmup=0.0, max_cv=1.0)))
    assert r["status"] == "ok" and r["kv_cache_mib"] > 0


def test_an_unsteady_ratio_whose_direction_is_clear_is_kept():
    rows = [_row("base", 10.0, 0.12, half=0.1), _row("slower", 30.0, 0.12, half=0.1),
            _row("unclear", 8.0, 0.2, half=0.2)]
    add_ratios(rows)
    assert rows[1]["ratio_unreliable"] is False  # [0.27, 0.41]: three times slower, whatever the noise
    assert rows[2]["ratio_unreliable"] and rows[2]["speedup_ci95_low"] < 1 < rows[2]["speedup_ci95_high"]


def test_the_ratio_rules_use_the_measurement_threshold():
    from effprof.analysis import ratios
    from effprof.measure import UNSTEADY_CV

    assert ratios.UNSTEADY_CV == UNSTEADY_CV
