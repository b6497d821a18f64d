"""The ci-smoke profile: every registered component through `effprof compare` on CPU."""
import yaml

from effprof.cli.main import main
from effprof.core.profiles import find_profile
from effprof.core.registry import list_components
from effprof.report.files import read_csv


def test_ci_smoke_covers_every_registered_component_and_runs(tmp_path):
    rows = yaml.safe_load(find_profile("ci-smoke").read_text())["rows"]
    registered = {c.name for c in list_components() if not c.name.startswith("test-")}
    assert registered <= {row["component"] for row in rows}
    out = tmp_path / "smoke.csv"
    assert main(["compare", "ci-smoke", "--csv", str(out)]) == 0
    records = read_csv(out)
    assert len(records) == len(rows)
    for r in records:
        assert r["status"] == "ok", (r["label"], r.get("error"))
        assert r["latency_ms_p10"] <= r["latency_ms_median"] <= r["latency_ms_p90"]
        assert r["gflops"] > 0 and r["params_total"] > 0 and r["throughput_per_s"] > 0
    ssm_rows = [r for r in records if r["component"] in ("mamba", "mamba-lm", "mrss")]
    assert ssm_rows and all(r["scan_backend"] == "ref" for r in ssm_rows)
