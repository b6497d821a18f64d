"""Output that goes where users put it: a table that fits 120 columns, --columns, Markdown and HTML files."""
import base64
import re

import pytest
from rich.console import Console

from effprof.cli.main import main
from effprof.report.export import to_html, to_markdown
from effprof.report.table import chosen_columns, column_keys, records_table


def _rows():
    rows = []
    for i, (component, L) in enumerate([("mamba-lm", 1024), ("mamba-lm", 16384), ("transformer-lm", 1024),
                                        ("transformer-lm", 16384)]):
        extra = ",n_layer=24" if component == "transformer-lm" else ""
        rows.append(dict(label=f"{component.split('-')[0]} L={L // 1024}k", component=component,
                         params=f"preset=130m{extra},seq_len={L}", batch=1, dtype="bf16", device="cuda", status="ok",
                         latency_ms_median=12.3456 * (i + 1), latency_ms_p10=12.1, latency_ms_p90=13.2, latency_cv=0.01,
                         throughput_per_s=541234.0, unit="tok", peak_mem_mib=1234.5, weights_mib=250.1,
                         params_total=129135360 + i, params_trainable=129135360 + i, gflops=1234.5678,
                         tflops_per_s=345.6, pct_of_compute_ceiling=45.6, achieved_gb_per_s=1234.0, verdict="compute",
                         energy_j_per_item=0.00123, sm_clock_mhz_median=1980.0, exec_mode="graphs",
                         flop_coverage=0.87, speedup=1 / (i + 1), params_ratio=1.0 + i / 10, gflops_ratio=16.0 + i,
                         peak_mem_ratio=12.345 + i, scan_backend="triton"))
    return rows


def _width(table) -> int:
    console = Console(width=400, record=True)
    console.print(table)
    return max(len(line.rstrip()) for line in console.export_text().splitlines())


def test_the_brief_table_fits_120_columns_and_full_shows_everything():
    rows = _rows()
    assert _width(records_table(rows, "Mamba-130m vs a Transformer of the same width and depth")) <= 120
    assert _width(records_table(rows, "t", "full")) > 120
    console = Console(width=400, record=True)
    console.print(records_table(rows, "t"))
    text = console.export_text()
    assert "preset=130m" in text.splitlines()[0]  # common to every row: said once, in the title
    assert re.search(r"^ transformer L=1k .*\n n_layer=24 *\n seq_len=1024", text, re.M)  # whole name=value lines
    assert "seq_len=10\n" not in text


def test_columns_by_key_in_the_given_order_and_unknown_keys_refused(capsys):
    rows = _rows()
    idx = chosen_columns(rows, "gflops,row")
    assert [column_keys()[i] for i in idx] == ["gflops", "row"]
    assert main(["run", "linear", "--columns", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown column 'nope'" in err and "latency_median" in err


def test_markdown_table_matches_the_records():
    rows = _rows()
    rows[0]["label"] = "a|b"
    text = to_markdown(rows, "T", notes=["fit: seq_len^1.02 [0.98, 1.06]"])
    lines = text.splitlines()
    table = [l for l in lines if l.startswith("|")]
    assert len(table) == 2 + len(rows)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[0] == "row" and "latency ms (median)" in header and "GFLOP/call (2×MAC)" in header
    assert table[1].startswith("| --- | ---:")
    first = table[2]
    assert first.startswith("| a\\|b<br>seq_len=1024 |") and "| 12.35 |" in first and "541,234 tok/s" in first
    assert all(l.count(" | ") == table[0].count(" | ") for l in table[2:] if "\\|" not in l)
    assert "**T (batch 1, dtype bf16, device cuda, mode graphs, preset=130m)**" in text and "seq_len^1.02" in text


def test_html_page_is_self_contained_with_the_table_and_an_inlined_image():
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    page = to_html(_rows(), "T <x>", images=[("fit", png)])
    assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == 1 + 4
    assert "T &lt;x&gt;" in page and "<td>24.69</td>" in page
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_compare_writes_markdown_and_html(tmp_path, fast):
    md, page = tmp_path / "t.md", tmp_path / "t.html"
    assert main(["compare", "linear", "--grid", "tokens=16,32", *fast, "--md", str(md), "--html", str(page)]) == 0
    text = md.read_text()
    assert "| tokens=16 |" in text and "| tokens=32 |" in text and "FLOPs = 2×MAC" in text
    html = page.read_text()
    assert "tokens=32" in html and "data:image/png;base64," in html  # the default plot, drawn for the page
