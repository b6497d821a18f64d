"""`effprof estimate` covers every LM effprof builds: the analytic FLOPs of mamba-lm, transformer-lm and
cobra equal what FlopCounterMode counts of the same call (effprof.measure.flops), and the tables print bytes
in MiB/GiB only (issue 27)."""
import re

import pytest
import torch

from effprof.cli.main import main
from effprof.measure.estimate import MambaShape, NeoXShape, estimate
from effprof.measure.flops import count_flops
from effprof.runner import Config, RunOptions, build, measure

CPU = dict(device="cpu", dtype="fp32", min_time=0.01, warmup=0.0, max_cv=1.0)
SMALL = {"mamba-lm": {"d_model": 48, "n_layer": 2, "seq_len": 7},
         "transformer-lm": {"d_model": 64, "n_head": 4, "n_layer": 2, "seq_len": 7}}


@pytest.mark.parametrize("component", ["mamba-lm", "transformer-lm"])
@pytest.mark.parametrize("mode", ["prefill", "decode"])
@pytest.mark.parametrize("head", [False, True])
def test_lm_estimate_equals_flopcountermode(component, mode, head):
    batch = 3
    config = Config(component, {**SMALL[component], "mode": mode, "head": head}, RunOptions(batch=batch, **CPU))
    built, values, _ = build(config)
    spec = built.hooks["estimate"]
    assert spec["stage"] == mode and spec["head"] is head and spec["tokens"] == 7
    inputs = built.make_inputs(batch)
    with torch.no_grad():
        counted, _ = count_flops(lambda: built.call(inputs))
    est = estimate(spec["shape"], mode, batch, 7, head=head)
    assert counted > 0 and est.flops == counted


def test_mamba_closed_form_by_hand():
    """One Mamba layer, prefill of L tokens: in_proj 2·L·d·2E, conv 2·L·E·K, x_proj 2·L·E·(R+2N), dt_proj
    2·L·R·E, scan 9·L·E·N + 2·L·E, out_proj 2·L·E·d; decode reads and writes the state."""
    d, e, n, k, r, L = 8, 16, 4, 4, 1, 5
    shape = MambaShape(1, d, e, n, k, r, vocab=32)
    by_hand = 2 * L * d * 2 * e + 2 * L * e * k + 2 * L * e * (r + 2 * n) + 2 * L * r * e \
        + 9 * L * e * n + 2 * L * e + 2 * L * e * d
    assert estimate(shape, "prefill", 1, L, head=False).flops == by_hand
    assert estimate(shape, "prefill", 1, L, head=True).flops == by_hand + 2 * d * 32
    decode = estimate(shape, "decode", 2, 10_000)
    prefill_state = sum(op.cache_bytes for op in estimate(shape, "prefill", 2, 10_000).layer)
    assert sum(op.cache_bytes for op in decode.layer) == 2 * prefill_state == 2 * shape.state_bytes(2)
    assert estimate(shape, "decode", 2, 10).bytes == decode.bytes  # constant in the context


def test_transformer_decode_reads_the_whole_kv_cache():
    shape = NeoXShape(2, 64, 4, 256, 100)
    short, long = (estimate(shape, "decode", 1, n) for n in (100, 1100))
    kv = sum(op.cache_bytes for op in long.layer) - sum(op.cache_bytes for op in short.layer)
    assert kv == 2 * 1000 * 64 * 2.0  # K and V, 1000 more positions, bf16


@pytest.mark.parametrize("mode, counted_field", [("prefill", "stage_prefill_gflops"), ("decode", "gflops")])
def test_cobra_estimate_equals_the_counted_lm(mode, counted_field):
    r = measure(Config("cobra", {"preset": "tiny", "mode": mode, "prompt_tokens": 5, "context": 9},
                       RunOptions(batch=2, device="meta", dtype="fp32")))  # meta: counted, not timed
    assert r["status"] == "ok", r.get("error")
    assert r["estimate_stage"] == mode
    assert r["estimate_gflops"] == pytest.approx(r[counted_field], rel=1e-12)


@pytest.mark.parametrize("component", ["cobra", "mamba-lm", "transformer-lm", "llava"])
def test_estimate_command_covers_every_lm_in_binary_units(component, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["estimate", component, "--preset", "tiny" if component in ("cobra", "llava") else "130m",
                 "--gpu", "H100"]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "decode" in out and "int4" in out
    assert "MiB" in out and "GiB moved" in out
    assert not re.search(r"\b[MG]B\b(?!/s)", out)  # no decimal MB/GB of bytes (bandwidth stays GB/s)


def test_estimate_refuses_a_component_without_an_lm(capsys):
    assert main(["estimate", "linear"]) == 2
    err = capsys.readouterr().err
    assert "mamba-lm" in err and "cobra" in err and "\n" not in err.strip()


@pytest.mark.parametrize("context", [256, 2048])
def test_llava_decode_bytes_counted_agree_with_the_estimate(context):
    """A decode step's counted bytes (weights read once, the KV cache read, one slot written, one embedding row)
    and the analytic model's agree: neither counts the cache twice nor the embedding table."""
    r = measure(Config("llava", {"preset": "tiny", "mode": "decode", "context": context},
                       RunOptions(device="meta", dtype="bf16")))  # the estimate's weights and cache are bf16
    assert r["status"] == "ok", r.get("error")
    assert r["moved_mib_lower_bound"] == pytest.approx(r["estimate_mib"], rel=0.03)


def test_an_fp32_row_says_its_estimate_is_of_a_16_bit_deployment():
    r = measure(Config("llava", {"preset": "tiny", "mode": "decode", "context": 64},
                       RunOptions(device="meta", dtype="fp32")))
    assert "16-bit deployment" in r["estimate_note"] and "measured_over_estimate" not in r
    bf16 = measure(Config("llava", {"preset": "tiny", "mode": "decode", "context": 64},
                          RunOptions(device="meta", dtype="bf16")))
    assert "estimate_note" not in bf16 and bf16["estimate_mib"] == r["estimate_mib"]
