"""The fused Llama decode step (effprof/models/llama_decode.py) against transformers' own forward: the same
logits and cache writes, the same state_dict, on the tiny LLaVA and on a grouped-query Llama."""
import pytest
import torch

from effprof.models.llama_decode import LlamaDecodeStep, fusable
from effprof.models.llava import PRESETS, LlavaPipeline, StaticKV, build_llava, cache_keyword, kv_mask


def test_fused_decode_equals_the_transformers_step_and_keeps_the_state_dict():
    torch.manual_seed(0)
    model = build_llava(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    pipe = LlavaPipeline(model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 32000, (2, 12))
    results = {}
    for impl in ("transformers", "fused"):
        assert pipe.use_decode_impl(impl) == impl
        for full in (False, True):  # a cache with room to spare (masked) and one the step fills (unmasked)
            kv = pipe.new_cache(12 if full else 16, 2)
            with torch.no_grad():
                pipe.prefill(pipe.lm.get_input_embeddings()(ids[:, :-1]), kv)
                logits = pipe.decode(ids[:, -1:], kv, torch.full((1, 1), 11), full=full)
            results[impl, full] = logits, torch.stack(kv.keys), torch.stack(kv.values), kv.lengths.clone()
    for full in (False, True):
        for a, b in zip(results["transformers", full], results["fused", full]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        assert results["fused", full][3].tolist() == [12, 12]  # both paths advance the cache's lengths
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    attn, mlp = pipe.lm.layers[1].self_attn, pipe.lm.layers[1].mlp
    qkv, gate_up = pipe._fused_step.fused[1]["qkv"][0], pipe._fused_step.fused[1]["gate_up"][0]
    # the Linears' weights are views of the fused tensors: no second copy of the weights
    assert attn.q_proj.weight.data_ptr() == qkv.data_ptr()
    assert attn.v_proj.weight.data_ptr() == qkv[2 * attn.q_proj.out_features].data_ptr()
    assert mlp.up_proj.weight.data_ptr() == gate_up[mlp.gate_proj.out_features].data_ptr()
    # fusing again reuses the views (idempotent)
    again = LlamaDecodeStep(pipe.lm, pipe.lm_head).fused[1]["qkv"][0]
    assert again.data_ptr() == qkv.data_ptr() and again.shape == qkv.shape


def decode_against_a_full_forward(backend: str, seed: int = 1):
    """(the fused step's logits, the full forward's last logits) of a grouped-query Llama with biases: 6 query
    heads, 2 key/value heads of width 8, 2 layers, 3 sequences of 8 tokens + 1 decoded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=64, attention_bias=True,
                         mlp_bias=True)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (3, 9))
    kv = StaticKV(config, 11, 3, torch.device("cpu"), torch.float32)  # 2 slots to spare: masked
    step = LlamaDecodeStep(model.model, model.lm_head, backend)
    assert step.kv_heads == 2 and step.fused[0]["qkv"][1].shape == (6 * 8 + 2 * 2 * 8,)
    with torch.no_grad():
        reference = model(input_ids=ids).logits[:, -1:]
        model.model(input_ids=ids[:, :-1], position_ids=torch.arange(8).unsqueeze(0), use_cache=True,
                    attention_mask=kv_mask(torch.arange(8).view(1, -1), 11), **{cache_keyword(model.model): kv.cache})
        got = step(ids[:, -1:], kv.keys, kv.values, torch.full((1, 1), 8), kv_mask(torch.full((1, 1), 8), 11))
    return got, reference


def test_fused_decode_with_grouped_query_attention_matches_a_full_forward():
    got, reference = decode_against_a_full_forward("ref")
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_fusable_names_what_it_cannot_fuse():
    assert fusable(torch.nn.Linear(2, 2)) == "Linear is not a Llama-style decoder"
    with pytest.raises(ValueError, match="fused decode: Linear is not a Llama-style decoder"):
        LlamaDecodeStep(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))



def test_decode_impl_is_reported_and_counts_the_same_flops(capsys):
    from effprof.cli.main import main
    from effprof.ops.selective_scan import available_backends
    from effprof.runner import Config, RunOptions, measure

    records = [measure(Config("llava", {"preset": "tiny", "mode": "decode", "context": 12, "decode_impl": impl},
                              RunOptions(device="cpu", min_time=0.01, warmup=0))) for impl in ("transformers", "fused")]
    assert [r["decode_impl"] for r in records] == ["transformers", "fused"]
    assert records[0]["gflops"] == records[1]["gflops"] > 0  # the same matrix products, counted alike
    if "triton" not in available_backends(torch.device("cpu")):  # triton on a CPU: one line, exit 2, no traceback
        assert main(["run", "llava", "--preset", "tiny", "--mode", "decode", "--decode-impl", "triton",
                     "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "--decode-impl triton: the triton decode step needs a CUDA device" in err and "Traceback" not in err
