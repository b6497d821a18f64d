"""On --device meta every reducer row is counted or refused with a reason in one line, never torch's internal
words (issue 27: `compare token-reduction --device meta`)."""
import pytest

from effprof.cli.main import main
from effprof.core.reducers import list_reducers
from effprof.runner import Config, RunOptions, measure_many

META = RunOptions(device="meta", dtype="fp32")
REDUCERS = [r.name for r in list_reducers()]
FIT_TINY = {"visionzip": {"dominant": 4, "contextual": 2}}  # the defaults keep 64 of 576 tokens; tiny has 17


def test_every_reducer_on_meta_is_counted_or_refused_in_one_line():
    configs = [Config("llava", {"preset": "tiny", "reducer": name, **FIT_TINY.get(name, {})}, META, label=name) for name in REDUCERS]
    records = measure_many(configs)
    assert len(records) == len(REDUCERS) >= 9
    for record in records:
        assert record["status"] in ("ok", "refused"), (record["label"], record.get("error"))
        if record["status"] == "ok":
            assert record["gflops"] > 0
        else:
            error = record["error"]
            assert "\n" not in error and "not countable on --device meta" in error, error
            assert error.startswith(f"--reducer {record['label']}:") and "count it on cpu or cuda" in error
    assert any(r["status"] == "ok" for r in records)  # those that do not read values are counted


def test_run_on_meta_refuses_a_data_dependent_reducer_in_one_line(capsys):
    assert main(["run", "llava", "--preset", "tiny", "--reducer", "prumerge", "--device", "meta"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not countable on --device meta" in err and "\n" not in err and "Tensor.item()" not in err


def test_a_reducer_that_declares_its_token_count_is_counted_on_meta_with_it():
    """VisionZip's selection reads values, but it declares its output (tokens_out = dominant + contextual):
    on meta the projector and the LM are counted at that length, as a real run counts them."""
    params = {"preset": "tiny", "reducer": "visionzip", "dominant": 4, "contextual": 2}
    meta, cpu = measure_many([Config("llava", params, META),
                              Config("llava", params, RunOptions(device="cpu", dtype="fp32", min_time=0.01,
                                                                 warmup=0.0, max_cv=1.0))])
    assert meta["status"] == cpu["status"] == "ok"
    assert "declared 6 tokens" in meta["reducer_meta_count"] and meta["image_tokens_out"] == cpu["image_tokens_out"] == 6
    for stage in ("vision", "project", "prefill"):
        assert meta[f"stage_{stage}_gflops"] == cpu[f"stage_{stage}_gflops"]
    # the cost model follows the reduced prompt (a static cache of the unreduced length: attention over all of it)
    assert meta["estimate_gflops"] == cpu["estimate_gflops"] == cpu["stage_prefill_gflops"]


@pytest.mark.parametrize("mode, extra", [("decode", {"context": 256}), ("prefill", {})])
def test_a_count_on_meta_predicts_the_devices_bytes(mode, extra):
    """On meta, attention counts as the fused kernel a device runs (q, k, v and mask read, output written), not
    the math decomposition meta would trace (scores materialised, k and v copied to float32): its FLOPs equal
    the device's count and its bytes come within 1% (the CPU kernel also writes its softmax statistics)."""
    params = {"preset": "tiny", "mode": mode, **extra}
    meta, cpu = measure_many([Config("llava", params, META),
                              Config("llava", params, RunOptions(device="cpu", dtype="fp32", min_time=0.01,
                                                                 warmup=0.0, max_cv=1.0))])
    assert meta["gflops"] == cpu["gflops"]
    assert meta["moved_mib_lower_bound"] == pytest.approx(cpu["moved_mib_lower_bound"], rel=0.01)


def test_a_profile_with_compile_or_cold_rows_is_refused_on_meta_with_the_flags_that_count_it(tmp_path, capsys):
    profile = tmp_path / "p.yaml"
    profile.write_text("rows:\n  - {component: linear, label: compiled, options: {compile: true}}\n"
                       "  - {component: linear, label: cold, options: {cold: true}}\n")
    assert main(["compare", str(profile), "--device", "meta"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--compile needs a real device" in err and "counted with --no-compile" in err
    assert main(["compare", str(profile), "--device", "meta", "--no-compile", "--warm"]) == 0
    out = capsys.readouterr().out
    assert "compiled" in out and "cold" in out


def test_a_decode_counted_on_meta_runs_the_step_a_gpu_runs():
    """auto resolves to the fused decode step on meta as on CUDA (the eager reference on CPU), so the count
    stands for the GPU's row."""
    params = {"preset": "tiny", "mode": "decode", "context": 64}
    meta, cpu = measure_many([Config("llava", params, META),
                              Config("llava", params, RunOptions(device="cpu", dtype="fp32", min_time=0.01,
                                                                 warmup=0.0, max_cv=1.0))])
    assert meta["decode_impl"] == "fused" and cpu["decode_impl"] == "transformers"
