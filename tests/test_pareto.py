"""Pareto plots (issue 27): the front of known points, and a plot written for a tiny CPU comparison of
reducers (TTFT / latency against fidelity) and beside --plot / inside --html."""
import pytest

from effprof.report.plot import pareto_front, pareto_pairs


def test_pareto_front_of_known_points():
    # (latency, fidelity): lower latency and higher fidelity are better
    points = [(1.0, 0.90), (2.0, 0.95), (3.0, 0.94), (1.5, 0.80), (4.0, 0.99), (2.0, 0.95)]
    assert pareto_front(points) == [0, 1, 5, 4]  # (3, .94) and (1.5, .80) are dominated; equal points both stay
    # throughput (higher better) against accuracy (higher better)
    assert pareto_front([(100, 70.0), (200, 60.0), (150, 75.0), (90, 80.0)], x_smaller_better=False) == [1, 2, 3]
    assert pareto_front([(1.0, 1.0)]) == [0] and pareto_front([]) == []


def test_the_pairs_follow_the_quality_columns_present():
    ok = dict(status="ok", latency_ms_median=1.0)
    reducers = [dict(ok, label="a", fidelity_cos=1.0, tokens_out=576), dict(ok, label="b", fidelity_cos=0.9,
                                                                             tokens_out=144)]
    assert [(p[0], p[3]) for p in pareto_pairs(reducers)] == [("latency_ms_median", "fidelity_cos"),
                                                              ("tokens_out", "fidelity_cos")]
    with_ttft = [dict(r, ttft_ms=2.0) for r in reducers]
    assert ("latency_ms_median", "fidelity_cos") not in [(p[0], p[3]) for p in pareto_pairs(with_ttft)]
    lora = [dict(ok, train=True, params_trainable=n) for n in (10, 20)]
    assert [(p[0], p[3]) for p in pareto_pairs(lora)] == [("latency_ms_median", "params_trainable")]
    assert pareto_pairs([dict(ok, params_trainable=n) for n in (10, 20)]) == []  # inference rows: no trade-off
    assert pareto_pairs([dict(ok, label="x")] * 3) == []


def test_a_reducer_comparison_writes_a_pareto_plot(tmp_path, fast):
    pytest.importorskip("matplotlib")
    from effprof.cli.main import main

    profile = tmp_path / "reducers.yaml"
    profile.write_text("""
title: tiny reducers
rows:
  - {component: llava, params: {preset: tiny, prompt_tokens: 4, reducer: prumerge}, label: prumerge}
  - {component: llava, params: {preset: tiny, prompt_tokens: 4, reducer: visionzip, dominant: 4, contextual: 2},
     label: visionzip 6}
""")
    plot, page = tmp_path / "r.png", tmp_path / "r.html"
    assert main(["compare", str(profile), *fast, "--no-flop-coverage", "--plot", str(plot), "--html", str(page)]) == 0
    pareto = tmp_path / "r-pareto.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pareto.is_file() and pareto.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pareto.stat().st_size > 5000
    assert page.read_text().count("data:image/png;base64,") == 2 and "Pareto front" in page.read_text()
