"""The LM scenario (effprof/scenarios/lm.py): prefill, decode and generate written once. A new LM-like model plugs
in by describing its parts, with no change to the runner, the trackers or the launchers; the generation
statistics follow vLLM's definitions and are checked against values computed here."""
import math
import statistics

import pytest
import torch
from torch import nn

from effprof.core.options import Config, RunOptions
from effprof.core.params import Param
from effprof.core.registry import _REGISTRY, BuildContext, Stage, register_component
from effprof.launch import launch
from effprof.scenarios.lm import LM_PARAMS, LMParts, lm_scenario, random_tokens
from effprof.trackers.generation import metric_fields

CPU = dict(device="cpu", min_time=0.01, warmup=0.0, max_cv=1.0)


class CountingLM(nn.Module):
    """A toy recurrent LM whose cache is a running sum of embeddings: its next token is known in closed form."""

    def __init__(self, vocab: int = 16, width: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids, state):
        state.add_(self.embed(ids).sum(dim=1))
        return self.head(state).unsqueeze(1)


@pytest.fixture
def counting_lm():
    """Register `test-counting-lm` (a component written only against the LM scenario) and remove it after."""

    @register_component("test-counting-lm", unit="tok", family="test",
                        params=[Param("seq_len", int, 6, "Prompt tokens.", low=1, high=64), *LM_PARAMS])
    def counting_lm(ctx: BuildContext, seq_len, mode, new_tokens, context, runs):
        model = CountingLM().to(ctx.device)

        def prefill(carry):
            ids, state = carry
            state.zero_()
            return model(ids, state)

        parts = LMParts(model, [Stage("prefill", prefill, model)],
                        lambda batch: (random_tokens(16, batch, seq_len, ctx.device),), seq_len,
                        lambda batch, capacity: torch.zeros(batch, 8, device=ctx.device),
                        lambda token, position, state: model(token, state),
                        lambda state, batch, length: model(random_tokens(16, batch, length, ctx.device), state), 16,
                        cache_facts=lambda state, tokens: {"state_mib": state.numel() * 4 / 2**20})
        return lm_scenario(parts, mode, ctx, new_tokens, context, runs)

    yield "test-counting-lm"
    _REGISTRY.pop("test-counting-lm", None)


def test_a_new_lm_like_component_gets_every_mode_without_touching_the_runner(counting_lm):
    configs = [Config(counting_lm, {"mode": mode, "new_tokens": "5", "runs": "4"}, RunOptions(**CPU), label=mode)
               for mode in ("prefill", "decode", "generate")]
    prefill, decode, generate = launch(configs)
    assert [r["status"] for r in (prefill, decode, generate)] == ["ok"] * 3
    assert prefill["items_per_call"] == 6 and decode["items_per_call"] == 1 and generate["items_per_call"] == 5
    assert prefill["state_mib"] == decode["state_mib"] == 8 * 4 / 2**20 and decode["context_len"] == 1024
    assert generate["generations_timed"] == 4 and generate["prefill_exec"] == "eager"
    assert 0 < generate["ttft_ms"] <= generate["e2e_ms"]
    # TPOT per generation = (E2E - TTFT) / (new tokens - 1): the means agree by construction of the stamps
    assert generate["tpot_ms_mean"] == pytest.approx((generate["e2e_ms_mean"] - generate["ttft_ms_mean"]) / 4, rel=1e-6)
    assert generate["itl_ms_mean"] == pytest.approx(generate["tpot_ms_mean"], rel=1e-6)  # equal-length generations


def test_generate_is_greedy_decoding_of_the_model(counting_lm):
    from effprof.core.registry import create

    built = create(counting_lm, mode="generate", new_tokens=4, seq_len=3)
    inputs = built.make_inputs(1)
    with torch.no_grad():
        tokens = built.call(inputs)
    model, ids = built.module, inputs[0]
    state = torch.zeros(1, 8)
    expected = []
    with torch.no_grad():
        logits = model(ids, state)
        for _ in range(4):
            token = logits[:, -1].argmax(-1, keepdim=True)
            expected.append(token)
            logits = model(token, state)
    assert torch.equal(tokens, torch.cat(expected, dim=1))


def test_metric_fields_against_statistics_by_hand():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    f = metric_fields("ttft", values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    assert f["ttft_ms_mean"] == pytest.approx(4.0)
    assert f["ttft_ms_p50"] == 3.0
    assert f["ttft_ms_p90"] == pytest.approx(4.0 + 0.6 * 6.0)   # linear: rank 0.9 × 4 = 3.6 between 4 and 10
    assert f["ttft_ms_p99"] == pytest.approx(4.0 + 0.96 * 6.0)
    assert f["ttft_cv"] == pytest.approx(sd / mean)
    half = 2.776 * sd / math.sqrt(5)  # t(0.975, 4 degrees of freedom), the printed table's three decimals
    assert (f["ttft_ms_ci95_low"], f["ttft_ms_ci95_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert metric_fields("x", []) == {}
    one = metric_fields("x", [2.0])
    assert one["x_ms_p99"] == 2.0 and one["x_ms_ci95_low"] is None


def test_generate_of_mamba_and_transformer_lms_and_the_graphs_refusal():
    from effprof.core.errors import ParamError
    from effprof.core.registry import create

    for name in ("mamba-lm", "transformer-lm"):
        built = create(name, mode="generate", new_tokens=3, seq_len=5, d_model=32, n_layer=2)
        with torch.no_grad():
            tokens = built.call(built.make_inputs(2))
        assert tokens.shape == (2, 3) and built.info["lm_head"] is True
    ctx = BuildContext(torch.device("cpu"), torch.float32, exec_mode="graphs")
    with pytest.raises(ParamError, match="DynamicCache grows"):
        create("transformer-lm", ctx, mode="generate", new_tokens=3, seq_len=5, d_model=32, n_layer=2)


def test_a_generation_is_counted_eagerly_even_where_it_replays_graphs(counting_lm):
    """Under --graphs a generation captures its graphs at its first call (warm-up calls included) and then replays
    them: the counting passes run inside `Built.counted()`, where it is one eager generation, so the FLOPs are
    one prefill and new_tokens - 1 decode steps (checked against the same model built eagerly)."""
    from effprof.core.registry import create
    from effprof.measure.bytes import count_flops_and_bytes

    graphs = create(counting_lm, BuildContext(torch.device("cpu"), torch.float32, exec_mode="graphs"),
                    mode="generate", new_tokens=5, seq_len=4)
    eager = create(counting_lm, mode="generate", new_tokens=5, seq_len=4)
    inputs_g, inputs_e = graphs.make_inputs(1), eager.make_inputs(1)
    generator = inputs_g[-1]
    with graphs.counted():
        assert generator.exec_mode == "eager"
        counted = count_flops_and_bytes(lambda: graphs.call(inputs_g))
    assert generator.exec_mode == "graphs" and generator._graph is None  # nothing was captured while counting
    reference = count_flops_and_bytes(lambda: eager.call(inputs_e))
    assert counted.flops == reference.flops > 0
    head_flops = 2 * 8 * 16  # the head's matmul, 2 x MAC: (1, 8) x (8, 16); the bias add has no FLOP formula
    assert counted.flops == 5 * head_flops  # one prefill + 4 steps, each one head
