"""The typed record (issue 24): every column a real record holds is declared with a unit and a meaning, the
writers and the table derive from the declaration, `effprof columns` prints it; and the table shows what the
user asked for (issue 27): the columns a component or flag exists for, no cut numbers, notes only for the
columns shown."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from effprof.cli.main import main
from effprof.core.columns import UNITS, all_columns, lookup, undeclared, views
from effprof.report.files import columns as csv_columns
from effprof.report.files import to_csv, to_json
from effprof.report.table import chosen_columns, column_keys, footer, print_records

ROOT = Path(__file__).resolve().parents[1]

# A few rows of several kinds, tiny and on CPU, in one process: flags (--flops-crosscheck, --train), a
# token-pruning ViT, a VLM with a reducer (extras, stages), a generation (TTFT/TPOT) and a decode step (state).
ROWS = """
title: every column declared
options: {device: cpu, dtype: fp32, batch: 1, min_time: 0.005, warmup: 0, max_cv: 1}
rows:
  - {component: linear, params: {tokens: 16, in_dim: 32, out_dim: 64}, options: {flops_crosscheck: true}}
  - {component: linear, params: {tokens: 16, in_dim: 32, out_dim: 64}, options: {train: true}, label: linear train}
  - {component: clip-vtp, params: {img_size: 32, keep: 0.5}, options: {flop_coverage: false}}
  - {component: llava, params: {preset: tiny, prompt_tokens: 4, reducer: prumerge}, options: {flop_coverage: false}}
  - {component: llava, params: {preset: tiny, mode: generate, prompt_tokens: 4, new_tokens: 2},
     options: {flop_coverage: false}, label: llava generate}
  - {component: mamba-lm, params: {d_model: 32, n_layer: 2, seq_len: 16, mode: decode}, label: mamba-lm decode}
"""


@pytest.fixture(scope="module")
def real_records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("columns")
    (folder / "rows.yaml").write_text(ROWS)
    out = folder / "rows.json"
    assert main(["compare", str(folder / "rows.yaml"), "--json", str(out), "--csv", str(folder / "rows.csv")]) == 0
    return json.loads(out.read_text())


def test_every_key_of_real_records_is_declared_with_a_unit_and_a_meaning(real_records):
    records = real_records["records"]
    assert [r["status"] for r in records] == ["ok"] * len(records)
    keys = list(dict.fromkeys(k for r in records for k in r))
    assert undeclared(keys) == []
    for key in keys:
        column = lookup(key)
        assert column.unit in UNITS and len(column.meaning) > 12 and column.filled_by, key
    # the flags' and components' columns are there, so the check above covered them
    for key in ("fvcore_gmacs", "train_grads_mib", "fidelity_cos", "stage_vision_ms", "ttft_ms", "state_mib",
                "mfu_datasheet_pct", "mbu_mib_per_token", "param_keep"):
        assert any(key in r for r in records), key
    # MFU's FLOPs are the whole call's: a VLM's vision tower and projector are in them
    llava = next(r for r in records if r["label"] == "llava")
    stages = [llava[f"stage_{name}_gflops"] for name in llava["stage_names"].split(",")]
    assert llava["stage_vision_gflops"] > 0 and llava["gflops"] == pytest.approx(sum(stages), rel=1e-6)
    # the JSON says what each of its columns is
    described = real_records["effprof"]["columns"]
    assert described["latency_ms_median"].startswith("ms: ") and "undeclared" not in described.values()


def test_every_components_facts_are_declared():
    """What each component states about itself (`Built.info`), on the meta device, for every mode it has."""
    import torch

    from effprof.core.registry import BuildContext, list_components

    ctx = BuildContext(torch.device("meta"), torch.float32, 0, "eager")
    seen = set()
    for component in list_components():
        if not component.factory.__module__.startswith("effprof.components."):
            continue  # a test's own component (registered by another test), not a built-in one
        modes = next((p.choices for p in component.params if p.name == "mode"), None) or (None,)
        for mode in modes:
            built = component.build(component.resolve({} if mode is None else {"mode": mode}), ctx)
            seen |= set(built.info)
    assert len(seen) > 40
    assert undeclared(seen) == []


def test_the_declaration_is_consistent():
    names = [c.name for c in all_columns()]
    assert len(names) == len(set(names))
    assert all(c.unit in UNITS and c.meaning and c.filled_by for c in all_columns())
    keys = [v.key for v in views()]
    assert len(keys) == len(set(keys))
    for view in views():
        assert view.shown in ("brief", "present", "full") and view.header
        assert all(lookup(s) is not None for s in view.sources), view.key
        assert view.shown != "present" or view.when, view.key  # what adds it, for `effprof columns`
    assert lookup("stage_vision_ms").name == "stage_<stage>_ms" and lookup("param_keep").name == "param_<name>"
    assert lookup("latency_cv").name == "latency_cv" and lookup("no_such_key") is None


def test_csv_leads_with_the_declared_columns_and_leaves_lists_to_the_json():
    records = [{"z_extra": 1, "latency_samples_ms": [1.0, 2.0], "latency_ms_median": 1.5, "label": "a",
                "status": "ok"}]
    assert csv_columns(records) == ["label", "status", "latency_ms_median", "z_extra"]
    header = to_csv(records).splitlines()[0]
    assert header == "label,status,latency_ms_median,z_extra"
    doc = json.loads(to_json(records))
    assert doc["records"][0]["latency_samples_ms"] == [1.0, 2.0]
    assert doc["effprof"]["columns"]["z_extra"] == "undeclared"
    assert doc["effprof"]["columns"]["latency_samples_ms"].startswith("list: ")


def test_columns_command_prints_the_dictionary(capsys):
    assert main(["columns", "mfu_*"]) == 0
    out = capsys.readouterr().out
    assert "mfu_datasheet_pct" in out and "mfu_measured_pct" in out and "tracker utilization" in out
    assert "latency_ms_median" not in out
    assert main(["columns", "latency", "--markdown"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "| column | unit | filled by | meaning | in the table |"
    assert "| `latency_ms_median` | ms | runner (timing) |" in text and "brief table" in text
    assert all(line.count(" | ") == 4 for line in lines)
    assert main(["columns", "stage_vision_ms"]) == 0  # a key read off a CSV header: its pattern's entry
    assert "stage_<stage>_ms" in capsys.readouterr().out
    assert main(["columns", "no_such_thing"]) == 2
    assert "no column matches 'no_such_thing'" in capsys.readouterr().err


def test_columns_command_does_not_import_torch():
    code = ("import sys; from effprof.cli.main import main; rc = main(['columns', 'stage_*']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage_<stage>_ms" in proc.stdout


def _row(label, **extra):
    base = dict(label=label, component="x", params="", batch=1, dtype="fp32", device="cpu", status="ok", unit="img",
                latency_ms_median=12.3456, latency_ms_p10=12.0, latency_ms_p90=13.0, latency_cv=0.01,
                throughput_per_s=81.0, peak_mem_mib=12.5, params_total=1_000_000, params_trainable=1_000_000,
                gflops=1.5, tflops_per_s=0.12, flop_coverage=0.9)
    return {**base, **extra}


def _text(records, width=250, columns="brief"):
    console = Console(width=width, record=True)
    print_records(records, "T", console=console, columns=columns)
    return console.export_text()


@pytest.mark.parametrize("fields, header", [
    (dict(fvcore_gmacs=0.75, thop_gmacs=0.74), "fvcore G"),
    (dict(top1_pct=76.543, top5_pct=93.1), "top-1 %"),
    (dict(tokens_in=577, tokens_out=289, fidelity_cos=0.98765), "fidelity"),
    (dict(ttft_ms=35.2, tpot_ms_mean=7.25, kv_cache_mib=64.0), "TTFT"),
    (dict(scan_sequences=4, paper_gmacs_per_img=4.91), "scan K"),
    (dict(stage_names="vision,prefill", stage_vision_ms=3.5, stage_prefill_ms=9.25), "stages ms"),
    (dict(mfu_datasheet_pct=41.5, mfu_convention="MFU % = counted FLOPs ..."), "MFU %"),
])
def test_the_brief_table_shows_the_columns_a_flag_or_component_exists_for(fields, header):
    plain = _text([_row("a")])
    assert header not in plain
    shown = _text([_row("a", **fields)])
    assert header in shown
    for value in fields.values():
        if isinstance(value, float):
            assert (f"{value:.2f}" in shown or f"{value:.4f}" in shown or f"{value:.1f}" in shown
                    or f"{value:g}" in shown), value


def test_a_footer_explains_only_the_columns_shown():
    record = _row("a", flop_coverage_method="aten op CPU time")
    assert "FLOP cov." not in footer([record])  # the brief table does not show it
    assert "FLOP cov." in footer([record], "full")
    record["flop_coverage_low"] = True
    assert "FLOP cov." in footer([record])


def test_narrow_terminals_leave_columns_out_with_a_note_and_never_cut_a_number():
    records = [_row("baseline row", speedup=1.0, params_ratio=1.0, gflops_ratio=1.0, peak_mem_ratio=1.0),
               _row("other row", latency_ms_median=1234.5678, speedup=0.01, params_ratio=12.345,
                    gflops_ratio=123.456, peak_mem_ratio=7.5, fidelity_cos=0.9876, tokens_in=577, tokens_out=144)]
    for width in (60, 80, 120):
        text = _text(records, width)
        assert "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
        assert "1,235" in text  # the latency, whole
    assert "not shown, to fit 80 columns:" in _text(records, 80)
    assert "not shown" not in _text(records, 250)


def test_unreliable_ratios_read_tilde_and_tiny_cpu_memory_below_resolution():
    base = _row("base", speedup=1.0, peak_mem_ratio=1.0)
    row = _row("noisy", speedup=30.0, peak_mem_ratio=10.0, ratio_unreliable=True,
               speedup_note="CV 0.8 on both rows", peak_mem_below_resolution=True, peak_mem_mib=0.0039)
    text = _text([base, row])
    line = next(x for x in text.splitlines() if x.startswith(" noisy"))
    assert "30.00" not in line and "~" in line and "10.000" not in line and "0.0039" not in line
    assert "below resolution" in line
    assert "~ ratio not shown: noisy: CV 0.8 on both rows" in text
    assert "below resolution: the peak memory is below what the method resolves" in text


def test_columns_keys_unchanged_for_users():
    keys = column_keys()
    for key in ("row", "latency", "latency_median", "throughput", "peak_mem", "gflops", "tflops", "flop_cov",
                "speedup", "params_ratio", "gflops_ratio", "mem_ratio", "fvcore_g", "top_1", "scan_k"):
        assert key in keys
    assert [column_keys()[i] for i in chosen_columns([_row("a")], "tflops,row")] == ["tflops", "row"]


def test_profile_titles_and_labels_follow_overridden_parameters(tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["compare", "projectors", "--device", "meta", "--tokens", "16", "--in-dim", "32", "--out-dim", "64",
                 "--rank", "4", "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LLaVA projectors, 16 tokens, 32 -> 64" in text and "1024" not in text and "576" not in text
    labels = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert labels == ["linear", "lowrank-r4", "mlp2x_gelu", "gated", "lora-r4", "ldp (16->4)"]
    assert main(["compare", "projectors", "--device", "meta"]) == 0
    assert "LLaVA projectors, 576 tokens, 1024 -> 4096" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: 'x {no_such} y'\nrows:\n  - {component: linear}\n")
    assert main(["compare", str(bad), "--device", "meta"]) == 2
    err = capsys.readouterr().err
    assert "{no_such} is not a parameter of the row" in err and len(err.strip().splitlines()) == 1


def test_every_tracker_declares_the_columns_it_fills():
    from effprof.trackers import TRACKERS

    fillers = {c.filled_by for c in all_columns()}
    missing = [t.name for t in TRACKERS if t.name != "extras" and f"tracker {t.name}" not in fillers]
    assert missing == []  # extras passes on a component's facts: those are declared as "component (extras)"
    assert "component (extras)" in fillers
