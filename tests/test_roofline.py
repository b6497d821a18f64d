"""Roofline fields and verdicts on synthetic numbers; the roofline plot."""
import pytest

from effprof.core.errors import UsageError
from effprof.measure.roofline import OVERHEAD_FACTOR, Ceilings, floors_ms, roofline_fields, verdict

H100 = Ceilings("NVIDIA H100 80GB HBM3", "datasheet", {"bf16": 1000.0, "fp16": 1000.0, "tf32": 500.0, "fp32": 50.0},
                2000.0)


def test_compute_bound_record():
    # 1000 GFLOP at 1000 TFLOP/s = 1 ms; 0.4 GB at 2000 GB/s = 0.2 ms; measured 1.25 ms.
    f = roofline_fields(1000.0, 400_000_000, 1.25, H100, "bf16")
    assert f["compute_floor_ms"] == pytest.approx(1.0)
    assert f["memory_floor_ms"] == pytest.approx(0.2)
    assert f["tflops_per_s"] == pytest.approx(800.0)
    assert f["pct_of_compute_ceiling"] == pytest.approx(80.0)
    assert f["moved_mib_lower_bound"] == pytest.approx(400e6 / 2**20)
    assert f["achieved_gb_per_s"] == pytest.approx(320.0)
    assert f["pct_of_bandwidth_ceiling"] == pytest.approx(16.0)
    assert f["arithmetic_intensity_flop_per_byte"] == pytest.approx(2500.0)
    assert f["roofline_fraction"] == pytest.approx(0.8)
    assert f["verdict"] == "compute"
    assert f["ceilings_source"] == "datasheet" and f["peak_tflops"] == 1000.0 and f["peak_gb_per_s"] == 2000.0


def test_memory_bound_record():
    # an elementwise add of 4M bf16: 4M FLOP, 24 MiB read + written -> memory floor 0.0126 ms
    nbytes = 3 * 4 * 2**20 * 2
    f = roofline_fields(4 * 2**20 / 1e9, nbytes, 0.015, H100, "bf16")
    assert f["memory_floor_ms"] == pytest.approx(nbytes / 2000e9 * 1e3)
    assert f["compute_floor_ms"] == pytest.approx(4 * 2**20 / 1000e12 * 1e3)
    assert f["verdict"] == "memory"
    assert f["arithmetic_intensity_flop_per_byte"] == pytest.approx(1 / 6)


def test_overhead_threshold_is_ten_times_the_larger_floor():
    assert OVERHEAD_FACTOR == 10
    assert verdict(10.0, 1.0, 0.5) == "compute"        # exactly 10x: still explained by compute
    assert verdict(10.001, 1.0, 0.5) == "overhead"
    assert verdict(10.001, 0.5, 1.0) == "overhead"
    assert verdict(9.0, 0.5, 1.0) == "memory"
    assert verdict(3.0, 1.0, None) == "compute"
    assert verdict(3.0, None, 1.0) == "memory"
    assert verdict(3.0, None, None) is None
    assert verdict(30.0, 1.0, 0.5, overhead_factor=50) == "compute"


def test_batch_one_transformer_is_overhead_bound():
    # ViT-B/16 at batch 1 (ANCHORS.md): 35.13 GFLOP in 6.15 ms on an 800 TFLOP/s device
    f = roofline_fields(35.13, 200_000_000, 6.15, Ceilings("gpu", "measured", {"bf16": 800.0}, 3000.0))
    assert f["verdict"] == "overhead"
    # the weights alone (~172 MB in bf16) make the memory floor the larger one: 0.2 GB / 3000 GB/s
    assert f["roofline_fraction"] == pytest.approx(max(35.13 / 800, 0.2 / 3000 * 1e3) / 6.15)


def test_fp32_ceiling_follows_tf32_setting():
    assert roofline_fields(50.0, None, 2.0, H100, "fp32")["compute_floor_ms"] == pytest.approx(1.0)
    assert roofline_fields(50.0, None, 2.0, H100, "fp32", allow_tf32=True)["compute_floor_ms"] == pytest.approx(0.1)


def test_unknown_ceilings_keep_achieved_figures_and_give_no_verdict():
    f = roofline_fields(2.0, 1_000_000, 4.0, None, "fp32")
    assert f["tflops_per_s"] == pytest.approx(0.5)
    assert f["achieved_gb_per_s"] == pytest.approx(0.25)
    assert f["ceilings_source"] == "unknown"
    assert f["verdict"] is None and f["compute_floor_ms"] is None and f["pct_of_compute_ceiling"] is None
    f = roofline_fields(None, None, 4.0, H100)
    assert f["verdict"] is None and "tflops_per_s" not in f


def test_floors_units():
    # 1 GFLOP at 1 TFLOP/s is 1 ms; 1e9 bytes at 1000 GB/s is 1 ms
    assert floors_ms(1.0, 10**9, 1.0, 1000.0) == (pytest.approx(1.0), pytest.approx(1.0))


def test_ceilings_round_trip_and_validation():
    assert Ceilings.from_dict(H100.as_dict()) == H100
    with pytest.raises(ValueError):
        Ceilings.from_dict({"device_name": "x", "source": "measured", "matmul_tflops": {"bf16": -1}})
    with pytest.raises(ValueError):
        Ceilings.from_dict({"device_name": "x"})
    with pytest.raises(ValueError):
        Ceilings.from_dict({"device_name": "x", "source": "measured", "bandwidth_gb_per_s": "fast"})


def test_roof_points_bend_at_the_ridge():
    from effprof.report.roofline_plot import roof_points

    xs, ys = roof_points(1000.0, 2000.0, 1.0, 10_000.0)
    assert xs == [1.0, 500.0, 10_000.0]  # ridge = 1000 TFLOP/s / 2000 GB/s = 500 FLOP/byte
    assert ys == [pytest.approx(2.0), pytest.approx(1000.0), pytest.approx(1000.0)]


def test_plot_roofline_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from effprof.report.roofline_plot import plot_roofline

    records = []
    for label, gflops, nbytes, ms in (("matmul", 1000.0, 400_000_000, 1.25), ("add", 0.004, 25_165_824, 0.015),
                                      ("vit-b1", 35.13, 200_000_000, 6.15)):
        records.append({"label": label, "dtype": "bf16", "status": "ok",
                        **roofline_fields(gflops, nbytes, ms, H100, "bf16")})
    path = tmp_path / "roof.png"
    plot_roofline(records, H100, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_roofline(records, H100.as_dict(), str(path))  # plain data works too
    with pytest.raises(UsageError):
        plot_roofline([{"label": "x", "status": "ok"}], H100, str(tmp_path / "none.png"))


def test_overhead_bound_eager_rows_get_a_footer_note_and_graphed_rows_do_not():
    from effprof.report.table import footer

    rows = [{"label": "vit-b1", "verdict": "overhead", "exec_mode": "eager"},
            {"label": "vit-b1-graphs", "verdict": "overhead", "exec_mode": "graphs"},
            {"label": "vit-b256", "verdict": "compute", "exec_mode": "eager"}]
    lines = footer(rows).splitlines()
    notes = [line for line in lines if "overhead-bound" in line]
    assert len(notes) == 1 and notes[0].startswith("vit-b1: ") and "--graphs" in notes[0]
    assert not any("overhead-bound" in line for line in footer(rows[1:]).splitlines())


def test_a_row_above_the_roof_is_flagged_and_its_bandwidth_marked():
    """Bytes faster than the bandwidth ceiling allows did not all come from DRAM: the record says so, the GB/s
    cell carries ^ and the table explains it, on that table only."""
    from effprof.measure.roofline import ROOF_TOLERANCE
    from effprof.report.table import footer, table_cells

    nbytes = 40 * 2**20                                     # 41.9 MB: a floor of 0.021 ms at 2,000 GB/s
    floor = nbytes / 2000e9 * 1e3
    on_roof = roofline_fields(None, nbytes, floor / 0.99, H100, "bf16")
    above = roofline_fields(None, nbytes, floor / (ROOF_TOLERANCE + 0.5), H100, "bf16")
    assert "roofline_above" not in on_roof and above["roofline_above"] is True
    rows = [{"label": "on", "device": "cuda", **on_roof}, {"label": "above", "device": "cuda", **above}]
    _, headers, cells, _ = table_cells(rows, columns="full")
    column = [h.replace("\n", " ") for h in headers].index("GB/s (≥, lower bd.)")
    assert not cells[0][column].endswith("^") and cells[1][column].endswith(" ^")
    assert any(line.startswith("^ = faster than") for line in footer(rows, "full").splitlines())
    assert not any(line.startswith("^ = ") for line in footer(rows[:1], "full").splitlines())
