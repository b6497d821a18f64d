"""Mamba block and language models: agreement with independent references, decoding, exact parameter and
FLOP counts, checkpoints in mamba-ssm's layout, and the `mamba`, `mamba-lm`, `transformer-lm` components."""
import json
import math

import pytest
from conftest import needs_interpreter, runs_interpreter_child
import torch
import torch.nn.functional as F

from effprof.cli.main import main
from effprof.components.mamba import TRANSFORMER_PRESETS
from effprof.core.errors import BackendUnavailable
from effprof.measure.flops import count_flops
from effprof.modules.mamba import (MAMBA_PRESETS, MambaBlock, MambaLM, MambaLMConfig, causal_conv1d_ref,
                                   causal_conv1d_update_ref, resolve_conv_backend)
from effprof.core.profiles import load_profile
from effprof.core.registry import BuildContext, create
from effprof.report.files import read_json
from effprof.runner import RunOptions

FAST = ["--device", "cpu", "--min-time", "0.02", "--warmup", "0"]
TINY_LM = ["--d-model", "32", "--n-layer", "2", "--seq-len", "12"]
CPU32 = BuildContext(torch.device("cpu"), torch.float32)


def tiny_lm(vocab=100, seed=0, **kw):
    torch.manual_seed(seed)
    return MambaLM(MambaLMConfig(d_model=32, n_layer=2, vocab_size=vocab, **kw)).eval()


# ---------------------------------------------------------------------------------------------------
# Independent references, written from the paper's equations (Gu & Dao 2023, Alg. 2 and Fig. 3)
# ---------------------------------------------------------------------------------------------------
def loop_causal_conv(x, weight, bias):
    """y[b, c, t] = bias[c] + sum_k weight[c, k] x[b, c, t - (K-1) + k], zeros before the start."""
    batch, channels, length = x.shape
    width = weight.shape[1]
    y = torch.zeros_like(x) + bias[None, :, None]
    for t in range(length):
        for k in range(width):
            s = t - (width - 1) + k
            if s >= 0:
                y[:, :, t] += weight[:, k] * x[:, :, s]
    return y


def loop_mamba_block(block, hidden):
    """The Mamba mixer one time step at a time, in float64, from the block's parameters."""
    W = {k: v.detach().double() for k, v in block.state_dict().items()}
    E, N, R = block.d_inner, block.d_state, block.dt_rank
    h = hidden.double()
    xz = h @ W["in_proj.weight"].T
    x, z = xz[..., :E].transpose(1, 2), xz[..., E:]
    x = F.silu(loop_causal_conv(x, W["conv1d.weight"][:, 0], W["conv1d.bias"])).transpose(1, 2)  # (B, L, E)
    x_dbl = x @ W["x_proj.weight"].T
    dt, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    delta = F.softplus(dt @ W["dt_proj.weight"].T + W["dt_proj.bias"])                            # (B, L, E)
    A = -torch.exp(W["A_log"])
    state = torch.zeros(h.shape[0], E, N, dtype=torch.float64)
    ys = []
    for t in range(h.shape[1]):
        state = torch.exp(delta[:, t, :, None] * A) * state + delta[:, t, :, None] * Bm[:, t, None, :] * x[:, t, :, None]
        ys.append((state * Cm[:, t, None, :]).sum(-1) + W["D"] * x[:, t])
    y = torch.stack(ys, 1) * F.silu(z)
    return y @ W["out_proj.weight"].T


def mamba_lm_params(d_model, n_layer, vocab=50277, pad=8, d_state=16, d_conv=4, expand=2):
    """Closed-form parameter count of mamba-ssm's MambaLMHeadModel (tied head counted once)."""
    E, R, V = expand * d_model, math.ceil(d_model / 16), math.ceil(vocab / pad) * pad
    block = (d_model * 2 * E                 # in_proj
             + E * d_conv + E                # depthwise conv1d + bias
             + E * (R + 2 * d_state)         # x_proj
             + R * E + E                     # dt_proj + bias
             + E * d_state + E               # A_log, D
             + E * d_model                   # out_proj
             + d_model)                      # the block's RMSNorm
    return V * d_model + n_layer * block + d_model


def block_flops(batch, L, d_model, d_state=16, d_conv=4, expand=2):
    """Hand count, FLOPs = 2 x MAC: the five projections and the conv, plus the scan's 9·B·L·E·N + 2·B·L·E
    (VMamba's formula, used by effprof.ops.selective_scan) for the D skip and the z gate."""
    E, R, N, BL = expand * d_model, math.ceil(d_model / 16), d_state, batch * L
    return (2 * BL * d_model * 2 * E + 2 * BL * E * d_conv + 2 * BL * E * (R + 2 * N) + 2 * BL * R * E
            + 9 * BL * E * N + 2 * BL * E + 2 * BL * E * d_model)


# ---------------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------------
def test_block_has_mamba_ssm_parameter_layout():
    block = MambaBlock(40, d_state=8)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {"in_proj.weight": (160, 40), "conv1d.weight": (80, 1, 4), "conv1d.bias": (80,),
                      "x_proj.weight": (3 + 16, 80), "dt_proj.weight": (80, 3), "dt_proj.bias": (80,),
                      "A_log": (80, 8), "D": (80,), "out_proj.weight": (40, 80)}
    torch.testing.assert_close(block.A_log[5], torch.log(torch.arange(1.0, 9.0)))
    dt = F.softplus(block.dt_proj.bias)
    assert bool(((dt >= 1e-4 * 0.999) & (dt <= 0.1 * 1.001)).all())
    bf16_block = MambaBlock(40, dtype=torch.bfloat16)
    assert bf16_block.A_log.dtype == torch.float32 and bf16_block.D.dtype == torch.float32
    assert bf16_block.in_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("batch, length, d_model", [(2, 13, 16), (1, 3, 24)])
def test_block_matches_loop_reference(batch, length, d_model):
    torch.manual_seed(length)
    block = MambaBlock(d_model, d_state=8).eval()
    hidden = torch.randn(batch, length, d_model)
    with torch.no_grad():
        y = block(hidden)
    assert y.shape == (batch, length, d_model) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), loop_mamba_block(block, hidden), rtol=1e-4, atol=1e-5)


def test_block_prefill_then_steps_equals_full_forward():
    torch.manual_seed(3)
    block = MambaBlock(24, d_state=8).eval()
    hidden = torch.randn(2, 11, 24)
    with torch.no_grad():
        full = block(hidden)
        for split in (2, 7):  # a prefill shorter and longer than the conv width
            state = block.allocate_state(2)
            pre = block(hidden[:, :split], state)
            steps = [block.step(hidden[:, t:t + 1], state) for t in range(split, 11)]
            torch.testing.assert_close(torch.cat([pre, *steps], 1), full, rtol=1e-5, atol=1e-6)


def test_conv_reference_is_the_causal_definition_and_the_step_agrees():
    torch.manual_seed(4)
    x, weight, bias = torch.randn(2, 6, 9), torch.randn(6, 4), torch.randn(6)
    torch.testing.assert_close(causal_conv1d_ref(x, weight, bias), loop_causal_conv(x, weight, bias))
    torch.testing.assert_close(causal_conv1d_ref(x, weight, bias, "silu"), F.silu(loop_causal_conv(x, weight, bias)))
    state = torch.zeros(2, 6, 4)
    steps = torch.stack([causal_conv1d_update_ref(x[:, :, t], state, weight, bias) for t in range(9)], -1)
    torch.testing.assert_close(steps, loop_causal_conv(x, weight, bias))
    torch.testing.assert_close(state, x[:, :, -4:])


def test_conv_backend_choice_is_explicit():
    assert resolve_conv_backend("auto", torch.device("cpu")) == "ref"
    with pytest.raises(BackendUnavailable, match="causal-conv1d"):
        resolve_conv_backend("causal-conv1d", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the causal-conv1d kernels need CUDA")
def test_causal_conv1d_fast_path_matches_reference():
    pytest.importorskip("causal_conv1d")
    from effprof.modules.mamba import causal_conv1d

    x, weight, bias = (torch.randn(*s, device="cuda") for s in ((2, 64, 300), (64, 4), (64,)))
    torch.testing.assert_close(causal_conv1d(x, weight, bias, "silu", "causal-conv1d"),
                               causal_conv1d_ref(x, weight, bias, "silu"), rtol=1e-4, atol=1e-5)


def test_block_flops_equal_the_hand_count():
    block = MambaBlock(32, d_state=16).eval()
    hidden = torch.randn(2, 20, 32)
    with torch.no_grad():
        flops, _ = count_flops(lambda: block(hidden))
        assert flops == block_flops(2, 20, 32)
        state = block.allocate_state(2)
        step_flops, _ = count_flops(lambda: block.step(hidden[:, :1], state))
    assert step_flops == block_flops(2, 1, 32)  # one step = the prefill count with L = 1


# ---------------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", list(MAMBA_PRESETS))
def test_lm_parameter_counts_equal_the_closed_form(preset):
    d_model, n_layer = {"130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48), "1.4b": (2048, 48),
                        "2.8b": (2560, 64)}[preset]
    with torch.device("meta"):
        model = MambaLM(MAMBA_PRESETS[preset])
    unique = {id(p): p.numel() for p in model.parameters()}
    assert sum(unique.values()) == mamba_lm_params(d_model, n_layer)
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert model.config.padded_vocab_size == 50280


def test_mamba_130m_has_the_published_parameter_count():
    assert mamba_lm_params(768, 24) == 129_135_360  # state-spaces/mamba-130m, tied embeddings


def test_lm_prefill_then_steps_equals_full_forward():
    model = tiny_lm()
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2)
        pre = model(ids[:, :6], cache)
        steps = [model.step(ids[:, t:t + 1], cache) for t in range(6, 10)]
        last = model(ids, num_last_tokens=1)
    assert full.shape == (2, 10, 104) and cache.seqlen_offset == 10
    torch.testing.assert_close(torch.cat([pre, *steps], 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, full[:, -1:])
    assert cache.nbytes == 2 * 2 * 64 * (4 + 16) * 4  # layers · batch · d_inner · (d_conv + d_state) · fp32


def test_lm_matches_transformers_mamba_model_on_the_same_weights():
    from transformers import MambaConfig, MambaModel

    torch.manual_seed(5)
    hf = MambaModel(MambaConfig(hidden_size=32, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4,
                                vocab_size=104, layer_norm_epsilon=1e-5, residual_in_fp32=True)).eval()
    ours = tiny_lm()
    state = {"backbone." + k.replace("embeddings.", "embedding."): v for k, v in hf.state_dict().items()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []  # the head is tied to the loaded embedding
    ids = torch.randint(0, 104, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours.backbone(ids), hf(ids).last_hidden_state, rtol=1e-4, atol=1e-5)


def test_lm_flops_equal_blocks_plus_head():
    model = tiny_lm()
    ids = torch.randint(0, 100, (3, 8))
    with torch.no_grad():
        flops, _ = count_flops(lambda: model(ids, num_last_tokens=1))
    assert flops == 2 * block_flops(3, 8, 32) + 2 * 3 * 32 * 104


# ---------------------------------------------------------------------------------------------------
# Checkpoints in mamba-ssm's and transformers' layouts
# ---------------------------------------------------------------------------------------------------
def write_mamba_ssm_checkpoint(directory, model):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")  # what save_pretrained writes
    (directory / "config.json").write_text(json.dumps({
        "d_model": 32, "n_layer": 2, "vocab_size": 100, "ssm_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 8}))


def test_pretrained_mamba_ssm_checkpoint_loads_exactly(tmp_path):
    saved = tiny_lm(seed=7)
    with torch.no_grad():
        saved.backbone.layers[1].mixer.D.add_(torch.randn(64))  # not the init value
    write_mamba_ssm_checkpoint(tmp_path / "ckpt", saved)
    built = create("mamba-lm", CPU32, pretrained=str(tmp_path / "ckpt"))
    loaded = built.module.state_dict()
    assert set(loaded) == set(saved.state_dict())
    for key, value in saved.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert built.info["weights"] == "pretrained" and built.info["n_layer"] == 2


def test_pretrained_transformers_layout_loads(tmp_path):
    from safetensors.torch import save_file

    saved = tiny_lm(seed=8)
    state = {k.replace("backbone.embedding.", "backbone.embeddings."): v.clone() for k, v in saved.state_dict().items()
             if k != "lm_head.weight"}  # safetensors drops the tied copy
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 104,
                                                      "state_size": 16, "expand": 2, "conv_kernel": 4}))
    model = create("mamba-lm", CPU32, pretrained=str(tmp_path)).module
    assert torch.equal(model.lm_head.weight, saved.lm_head.weight)
    assert torch.equal(model.backbone.layers[0].mixer.A_log, saved.backbone.layers[0].mixer.A_log)


@pytest.mark.parametrize("make, says", [
    (lambda d: None, "no such directory"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "none of pytorch_model.bin"),
    (lambda d: (d.mkdir(), (d / "pytorch_model.bin").write_bytes(b""),
                (d / "config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 8,
                                                           "ssm_cfg": {"layer": "Mamba2"}}))), "Mamba2"),
])
def test_bad_pretrained_is_one_line_exit_2(tmp_path, capsys, make, says):
    make(tmp_path / "ckpt")
    assert main(["run", "mamba-lm", "--pretrained", str(tmp_path / "ckpt"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# Components through the CLI
# ---------------------------------------------------------------------------------------------------
def run_record(tmp_path, *argv):
    path = tmp_path / "r.json"
    assert main(["run", *argv, *FAST, "--json", str(path)]) == 0
    return read_json(path)[0]


@pytest.mark.parametrize("mode, items, length", [("prefill", 16, 16), ("decode", 1, 1)])
def test_mamba_block_component(tmp_path, mode, items, length):
    r = run_record(tmp_path, "mamba", "--d-model", "32", "--seq-len", "16", "--mode", mode, "--batch", "2")
    assert r["status"] == "ok" and r["scan_backend"] == "ref" and r["conv_backend"] == "ref"
    assert r["items_per_call"] == 2 * items and r["unit"] == "tok"
    assert r["gflops"] * 1e9 == pytest.approx(block_flops(2, length, 32), rel=1e-12)
    assert r["state_mib"] * 2**20 == 2 * 64 * (4 + 16) * 4  # constant in seq_len


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_mamba_lm_component(tmp_path, mode):
    r = run_record(tmp_path, "mamba-lm", *TINY_LM, "--mode", mode, "--head", "true")
    tokens = 12 if mode == "prefill" else 1
    assert r["scan_backend"] == "ref" and r["conv_backend"] == "ref" and r["weights"] == "random"
    assert r["params_total"] == mamba_lm_params(32, 2)
    assert r["gflops"] * 1e9 == pytest.approx(2 * block_flops(1, tokens, 32) + 2 * 32 * 50280, rel=1e-12)
    assert r["state_mib"] * 2**20 == 2 * 64 * (4 + 16) * 4


def transformer_params(d, layers, vocab=50280):
    """GPT-NeoX with a tied head: per layer QKV + dense + 4d MLP (all with biases) + 2 LayerNorms."""
    return vocab * d + layers * (12 * d * d + 13 * d) + 2 * d


def test_transformer_comparator_matches_pythia_shapes():
    with torch.device("meta"):
        built = create("transformer-lm", BuildContext(torch.device("meta"), torch.float32), preset="130m")
    assert sum(p.numel() for p in built.module.parameters()) == transformer_params(768, 12)
    assert TRANSFORMER_PRESETS["2.8b"] == (2560, 32, 32) and built.info["attention"] == "sdpa"


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_transformer_lm_component(tmp_path, mode):
    r = run_record(tmp_path, "transformer-lm", "--d-model", "64", "--n-layer", "2", "--seq-len", "12", "--mode", mode)
    assert r["status"] == "ok" and r["params_total"] == transformer_params(64, 2)
    assert r["kv_cache_mib"] * 2**20 == 2 * 2 * 12 * 64 * 4  # K and V · layers · seq_len · d_model · fp32
    assert r["items_per_call"] == (12 if mode == "prefill" else 1)


def test_transformer_decode_keeps_the_context_length():
    built = create("transformer-lm", CPU32, d_model=64, n_layer=2, seq_len=10, mode="decode")
    inputs = built.make_inputs(1)
    with torch.no_grad():
        for _ in range(3):
            out = built.call(inputs)
    assert out.shape == (1, 1, 64) and inputs[1].kv.get_seq_length() == 11


def test_scan_backend_refusals(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["run", "mamba", "--d-model", "16", "--scan-backend", "triton", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "triton" in err and "\n" not in err
    assert main(["run", "mamba-lm", "--scan-backend", "bogus", *FAST]) == 2
    assert "bogus" in capsys.readouterr().err


def test_scaling_profile_validates():
    profile = load_profile("mamba-scaling", RunOptions(), {})
    assert [c.component for c in profile.configs] == ["mamba-lm"] * 5 + ["transformer-lm"] * 5
    assert [c.resolved()["seq_len"] for c in profile.configs[:5]] == [1024, 2048, 4096, 8192, 16384]
    assert profile.configs[0].options.dtype == "bf16" and profile.baseline == 0
    # eager, the short rows time the host (launch-bound): every row replays a CUDA graph (off CUDA: eager, noted)
    assert all(c.options.graphs or any("profile's default on CUDA" in n for n in c.notes) for c in profile.configs)
    # 0.1 s of timing is under ten calls of the 16k transformer row (~120 ms): one outlier marked it unsteady
    assert all(c.options.min_time >= 0.5 for c in profile.configs)


@runs_interpreter_child
def test_triton_tests_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) == 2


@needs_interpreter
@pytest.mark.slow  # CI: test_lm_prefill_on_the_triton_kernels_in_the_interpreter (blocks on the triton scan and conv)
def test_block_on_the_triton_scan_matches_ref_in_the_interpreter():
    """The block's strided views and mixed dtypes go through the triton kernels (CPU interpreter) unchanged, over
    more than one chunk of the scan (37 steps)."""
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=8).eval()
    hidden = torch.randn(2, 37, 16)
    with torch.no_grad():
        reference = block(hidden)
        block.scan_backend = "triton"
        torch.testing.assert_close(block(hidden), reference, rtol=1e-4, atol=1e-5)
        state = block.allocate_state(2)
        block(hidden[:, :30], state)
        steps = torch.cat([block.step(hidden[:, t:t + 1], state) for t in range(30, 37)], 1)
        torch.testing.assert_close(steps, reference[:, 30:], rtol=1e-4, atol=1e-5)


@needs_interpreter
def test_lm_prefill_on_the_triton_kernels_in_the_interpreter():
    """Prefill with the triton decode backend runs each layer's residual add + RMSNorm (and the final norm) as
    `add_rms_norm`'s one kernel: same output as the separate ops. A prefill on the triton conv and scan writes
    the cache's conv and SSM states from inside the kernels (no copies); decoding on from them (reference step)
    gives the full forward's logits. CPU interpreter."""
    torch.manual_seed(0)
    model = MambaLM(MambaLMConfig(d_model=16, n_layer=3, vocab_size=50, d_state=4, pad_vocab_size_multiple=8)).eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        reference = model(ids)
        model.set_backends(decode_backend="triton")   # prefill: residual add + RMSNorm as one triton kernel per layer
        torch.testing.assert_close(model(ids), reference, rtol=1e-5, atol=1e-5)
        model.set_backends(decode_backend="ref")
        for split in (2, 7):  # a prompt shorter and longer than the conv width
            model.set_backends(scan_backend="triton", conv_backend="triton")
            cache = model.allocate_cache(2)
            for layer in cache.layers:  # stale values the prefill must overwrite
                layer.conv_state.fill_(float("nan"))
                layer.ssm_state.fill_(float("nan"))
            logits = [model(ids[:, :split], cache)]
            model.set_backends(scan_backend="ref", conv_backend="ref")
            logits += [model.step(ids[:, t:t + 1], cache) for t in range(split, 9)]
            torch.testing.assert_close(torch.cat(logits, 1), reference, rtol=1e-4, atol=1e-4)


CPU_AND_CUDA = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_block_keeps_A_until_A_log_changes(device):
    block = MambaBlock(16, d_state=4, device=device).eval()
    with torch.no_grad():
        first = block._A()
        assert block._A() is first                                # kept: no kernels for -exp(A_log)
        torch.testing.assert_close(first, -torch.exp(block.A_log))
        block.A_log.mul_(2)                                       # an in-place change bumps the version
        torch.testing.assert_close(block._A(), -torch.exp(block.A_log))
    block.load_state_dict({k: v.clone() + (1 if k == "A_log" else 0) for k, v in block.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(block._A(), -torch.exp(block.A_log))
    A = block._A()                                                # with autograd on: computed, differentiable
    assert A.grad_fn is not None


@pytest.mark.parametrize("device", CPU_AND_CUDA)
def test_block_built_under_inference_mode_computes_A(device):
    """A model built under `torch.inference_mode()` has inference-tensor parameters, which carry no version
    counter: A is computed each call (a kept A could miss a change in place) and the block runs."""
    with torch.inference_mode():
        block = MambaBlock(16, d_state=4, device=device).eval()
        assert block.A_log.is_inference()
        first = block._A()
        torch.testing.assert_close(first, -torch.exp(block.A_log))
        block.A_log.mul_(2)                                       # no version bump on an inference tensor
        torch.testing.assert_close(block._A(), -torch.exp(block.A_log))
        assert block(torch.randn(1, 5, 16, device=device)).shape == (1, 5, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch, length", [(1, 793), (1, 37), (2, 64)])
def test_block_on_the_cuda_scan_matches_the_reference_scan(batch, length):
    """bf16 on a GPU: the block's batch-1 path (one B/C copy, dt_proj's bf16 bias read by the kernel, A kept,
    the batch-1 scan config) against the same block on the reference scan."""
    torch.manual_seed(0)
    block = MambaBlock(64, d_state=16, scan_backend="triton", conv_backend="ref", device="cuda",
                       dtype=torch.bfloat16).eval()
    hidden = torch.randn(batch, length, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fast = block(hidden).float()
        block.scan_backend = "ref"
        reference = block(hidden).float()
    assert ((fast - reference).norm() / reference.norm()).item() < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch, length", [(1, 793), (1, 3), (2, 64)])
def test_cuda_prefill_leaves_the_reference_states(batch, length):
    """bf16 on a GPU: a prefill on the triton conv and scan (the batch-1 lanes kernel at 1 × 793) writes the conv
    and SSM states into the cache from inside the kernels; they match the reference path's states."""
    torch.manual_seed(0)
    block = MambaBlock(64, d_state=16, scan_backend="triton", conv_backend="triton", device="cuda",
                       dtype=torch.bfloat16).eval()
    hidden = torch.randn(batch, length, 64, device="cuda", dtype=torch.bfloat16)
    states = {}
    with torch.no_grad():
        for backend in ("triton", "ref"):
            block.scan_backend = block.conv_backend = backend
            state = block.allocate_state(batch)
            state.conv_state.fill_(float("nan"))
            state.ssm_state.fill_(float("nan"))
            block(hidden, state)
            states[backend] = state
    assert torch.equal(states["triton"].conv_state, states["ref"].conv_state)   # the same inputs, copied
    fast, ref = states["triton"].ssm_state, states["ref"].ssm_state
    assert ((fast - ref).norm() / ref.norm()).item() < 1e-2                      # bf16 rounding of u, delta
