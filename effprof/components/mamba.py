"""Mamba components (family "ssm"): one block (`mamba`), the language model (`mamba-lm`) and a Transformer
language model of the same size class to compare with (`transformer-lm`).

`mamba` and `mamba-lm` build `effprof.modules.mamba` (mamba-ssm's layout) with random weights, or for
`mamba-lm` a real checkpoint with `--pretrained DIR` (config.json + pytorch_model.bin / model.safetensors,
as mamba-ssm's `save_pretrained` or transformers' MambaForCausalLM write them; the architecture then comes
from the checkpoint and `--preset` is ignored). Every record says which scan and conv paths ran
(`scan_backend`, `conv_backend`: resolved names, never "auto").

Modes: `prefill` times one forward over seq_len tokens (throughput in tokens/s = batch·seq_len / latency);
`decode` times one generated token per sequence with a cache already holding a context of seq_len tokens
(throughput = batch / latency). `head` adds the tied LM head: on the last position only in prefill (all a
generator needs; the (batch, L, 50280) logits of every position are never materialised) and on the new
token in decode. The default, head off, times the backbone, which is what `transformers.MambaModel`'s
forward (the ANCHORS measurement) returns. The state a generator keeps after prefill is reported in MiB:
`state_mib` for Mamba (conv + SSM states, constant in seq_len), `kv_cache_mib` for the Transformer.

`transformer-lm` is transformers' `GPTNeoXModel` (SDPA attention) in the Pythia architecture (Biderman et
al. 2023) that the Mamba paper compares against at each size (Gu & Dao 2023, §4.2): same width, half the
layers (a Transformer layer holds ~12·d² parameters, a Mamba block ~6·d², so parameters match), MLP 4·d,
rotary on 25% of each head, parallel residual; vocabulary 50280 and a tied head, as Mamba's. `--n-layer 24`
gives the same depth instead. Its decode step uses transformers' DynamicCache (the default of `generate`),
cut back to seq_len tokens before every timed step; that cache appends by concatenation, so each step also
copies the KV cache once, as it does in `generate` (a static or paged cache would not).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from effprof.core.errors import ParamError
from effprof.core.lazy import lazy_attr, lazy_from, lazy_import
from effprof.core.limits import MAX_LAYERS, MAX_STATE, MAX_TOKENS, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, Stage, register_component
from effprof.scenarios.lm import NEW_TOKENS, RUNS, LMParts, lm_scenario, random_tokens

# Imported when a factory runs, not when the components are listed (effprof/core/lazy.py).
torch = lazy_import("torch")
TransformerLM, kv_cache_bytes, output_cache, truncate_kv_cache = lazy_from(
    "effprof.models.transformer_lm", "TransformerLM", "kv_cache_bytes", "output_cache", "truncate_kv_cache")
MambaBlock, MambaLM, load_mamba_lm, resolve_conv_backend = lazy_from("effprof.modules.mamba", "MambaBlock", "MambaLM",
                                                                     "load_mamba_lm", "resolve_conv_backend")
resolve_backend = lazy_attr("effprof.ops.selective_scan", "resolve_backend")
resolve_decode_backend = lazy_attr("effprof.ops.mamba_decode", "resolve_decode_backend")
MAMBA_PRESETS = lazy_attr("effprof.modules.mamba", "MAMBA_PRESETS")
MambaShape, NeoXShape = lazy_from("effprof.measure.estimate", "MambaShape", "NeoXShape")
PRESET_NAMES = ("130m", "370m", "790m", "1.4b", "2.8b")  # = tuple(MAMBA_PRESETS) (tests/test_cli_fast.py)

MIB = 2**20
MODES = ("prefill", "decode")
LM_MODES = ("prefill", "decode", "generate")  # the LM scenario's (effprof/scenarios/lm.py)

MODE = Param("mode", str, "prefill", "prefill = one forward over seq_len tokens; decode = one new token per sequence "
             "with a cache holding seq_len tokens of context.", choices=MODES)
SCAN = Param("scan_backend", str, "auto", "Selective-scan path: auto = mamba-ssm if importable on CUDA, else triton "
             "on CUDA, else ref.", choices=("auto", "ref", "triton", "mamba-ssm"))
CONV = Param("conv_backend", str, "auto", "Causal conv1d path: auto = causal-conv1d if importable on CUDA, else "
             "triton on CUDA, else ref.", choices=("auto", "ref", "triton", "causal-conv1d"))
DECODE = Param("decode_backend", str, "auto", "Decoding step path: triton = fused step (two kernels between in_proj "
               "and out_proj, fused residual add + RMSNorm); ref = the ops one by one; auto = triton on CUDA.",
               choices=("auto", "ref", "triton"))
LM_MODE = Param("mode", str, "prefill", "prefill = one forward over seq_len tokens; decode = one new token per "
                "sequence with a cache holding seq_len tokens of context; generate = prefill + --new-tokens greedy "
                "tokens (with the LM head).", choices=LM_MODES)
HEAD = Param("head", bool, False, "Add the tied LM head (last position in prefill, the new token in decode); "
             "off = backbone only, like transformers' MambaModel.")
PRESET = Param("preset", str, "130m", "Size class: the released state-spaces/mamba-* architectures.",
               choices=PRESET_NAMES)


def _prefilled(fn):
    """Run a prefill that fills a cache (outside the timed region) without building autograd graphs."""
    with torch.no_grad():
        fn()


# ---------------------------------------------------------------------------------------------------
# mamba: one block
# ---------------------------------------------------------------------------------------------------
@register_component("mamba", unit="tok", family="ssm", params=[
    Param("d_model", int, 512, "Model width (d_inner = expand · d_model).", low=1, high=MAX_WIDTH),
    Param("d_state", int, 16, "SSM state size N per channel.", low=1, high=MAX_STATE),
    Param("d_conv", int, 4, "Causal depthwise conv width.", low=1, high=MAX_STATE),
    Param("expand", int, 2, "Inner expansion factor.", low=1, high=MAX_STATE),
    Param("seq_len", int, 8192, "Tokens per sequence (prefill) or context length held in the state (decode).",
          low=1, high=MAX_TOKENS),
    MODE, SCAN, CONV, DECODE,
])
def mamba_block(ctx: BuildContext, d_model, d_state, d_conv, expand, seq_len, mode, scan_backend, conv_backend,
                decode_backend):
    """One Mamba block (mamba-ssm's Mamba mixer), (batch, seq_len, d_model) -> same."""
    scan = resolve_backend(scan_backend, ctx.device)
    conv = resolve_conv_backend(conv_backend, ctx.device)
    decode = resolve_decode_backend(decode_backend, ctx.device)
    block = MambaBlock(d_model, d_state, d_conv, expand, scan_backend=scan, conv_backend=conv, decode_backend=decode,
                       device=ctx.device, dtype=ctx.dtype).eval()

    def hidden(batch, length):
        return torch.randn(batch, length, d_model, device=ctx.device, dtype=ctx.dtype)

    if mode == "prefill":
        def make_inputs(batch):
            return (hidden(batch, seq_len),)
        forward = None
    else:
        def make_inputs(batch):
            state = block.allocate_state(batch)
            _prefilled(lambda: block(hidden(batch, seq_len), state))
            return hidden(batch, 1), state

        def forward(module, inputs):
            return module.step(*inputs)

    def extras(module, inputs):
        state = module.allocate_state(inputs[0].shape[0]) if mode == "prefill" else inputs[1]
        return {"state_mib": state.nbytes / MIB}

    info = {"scan_backend": scan, "conv_backend": conv, "decode_backend": decode, "d_inner": block.d_inner,
            "dt_rank": block.dt_rank,
            "context_len": seq_len}
    return Built(block, make_inputs, "tok", items_per_sample=seq_len if mode == "prefill" else 1,
                 forward=forward, info=info, extras=extras)


# ---------------------------------------------------------------------------------------------------
# mamba-lm: the language model
# ---------------------------------------------------------------------------------------------------
@register_component("mamba-lm", unit="tok", family="ssm", params=[
    PRESET,
    Param("seq_len", int, 1024, "Prompt length (prefill) or context length held in the cache (decode).", low=1,
          high=MAX_TOKENS),
    LM_MODE, HEAD, SCAN, CONV, DECODE, NEW_TOKENS, RUNS,
    Param("pretrained", str, None, "Checkpoint directory (mamba-ssm or transformers layout) or cached hub id; "
          "none = random weights.", optional=True),
    Param("d_model", int, None, "Override the preset's width (none = the preset's).", low=1, high=MAX_WIDTH,
          optional=True),
    Param("n_layer", int, None, "Override the preset's number of layers (none = the preset's).", low=1,
          high=MAX_LAYERS, optional=True),
])
def mamba_lm(ctx: BuildContext, preset, seq_len, mode, head, scan_backend, conv_backend, decode_backend, new_tokens,
             runs, pretrained, d_model, n_layer):
    """Mamba language model (mamba-ssm's MambaLMHeadModel), token ids -> hidden states or next-token logits."""
    scan = resolve_backend(scan_backend, ctx.device)
    conv = resolve_conv_backend(conv_backend, ctx.device)
    decode = resolve_decode_backend(decode_backend, ctx.device)
    if pretrained is not None:
        from effprof.core.pretrained import find_checkpoint

        if d_model is not None or n_layer is not None:
            raise ParamError("--d-model/--n-layer cannot be combined with --pretrained (the checkpoint sets them)")

        directory = find_checkpoint(pretrained, ("pytorch_model.bin", "model.safetensors"))
        model = load_mamba_lm(directory, scan, conv, device=ctx.device, dtype=ctx.dtype, decode_backend=decode)
    else:
        config = replace(MAMBA_PRESETS[preset], **{k: v for k, v in (("d_model", d_model), ("n_layer", n_layer))
                                                    if v is not None})
        model = MambaLM(config, scan, conv, device=ctx.device, dtype=ctx.dtype, decode_backend=decode)
    model.eval()
    vocab = model.config.padded_vocab_size

    head = head or mode == "generate"  # generation needs the logits
    cfg = model.config
    info = {"scan_backend": scan, "conv_backend": conv, "decode_backend": decode,
            "weights": "pretrained" if pretrained else "random", "lm_head": head,
            "d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": vocab, "context_len": seq_len}

    def prefill(carry):  # the prompt -> hidden states, or the last position's logits (writing the state to decode on)
        ids, cache = carry
        if mode == "generate":
            return model(ids, cache, num_last_tokens=1)
        return model(ids, num_last_tokens=1) if head else model.backbone(ids)

    def step(token, position, cache):
        return model.step(token, cache) if head else model.backbone.step(token, cache)

    parts = LMParts(model, [Stage("prefill", prefill, model)], lambda b: (random_tokens(vocab, b, seq_len, ctx.device),),
                    seq_len, lambda batch, capacity: model.allocate_cache(batch), step,
                    lambda cache, batch, length: model.backbone(random_tokens(vocab, batch, length, ctx.device), cache),
                    vocab, info, cache_facts=lambda cache, tokens: {"state_mib": cache.nbytes / MIB},
                    estimate={m: lm_estimate(mamba_shape(model), m, seq_len, head) for m in ("prefill", "decode")})
    return lm_scenario(parts, mode, ctx, new_tokens, seq_len, runs)


def mamba_shape(model) -> MambaShape:
    """The cost model's view of a MambaLM (effprof.modules.mamba)."""
    cfg, mixer = model.config, model.mixers[0]
    return MambaShape(cfg.n_layer, cfg.d_model, mixer.d_inner, mixer.d_state, mixer.d_conv, mixer.dt_rank,
                      cfg.padded_vocab_size, mixer.conv1d.bias is not None, mixer.in_proj.bias is not None)


def lm_estimate(shape, mode: str, tokens: int, head: bool, measured_field: str = "latency_ms_median",
                prefill_tokens: int | None = None, context: int | None = None) -> dict[str, Any]:
    """`Built.hooks["estimate"]` of an LM row: the cost model's shape, the stage this row measures and its
    tokens, whether the LM head is in the call, and the prefill length and decode context `effprof
    estimate` tables (this row's, unless given)."""
    return {"shape": shape, "stage": mode, "tokens": tokens, "head": head, "measured_field": measured_field,
            "prefill_tokens": prefill_tokens or tokens, "context": context or tokens}


# ---------------------------------------------------------------------------------------------------
# transformer-lm: the comparator
# ---------------------------------------------------------------------------------------------------
# Pythia's architecture at Mamba's widths (d_model, layers, heads); 790m has no Pythia of its width:
# 12 heads of 128 as Pythia-1.4b's head size.
TRANSFORMER_PRESETS = {"130m": (768, 12, 12), "370m": (1024, 24, 16), "790m": (1536, 24, 12),
                       "1.4b": (2048, 24, 16), "2.8b": (2560, 32, 32)}


def transformer_shape(preset: str, d_model: int | None, n_head: int | None) -> tuple[int, int, int]:
    """(width, layers, heads) of a transformer-lm row; refuses a width its head count does not divide."""
    width, layers, heads = TRANSFORMER_PRESETS[preset]
    if d_model is not None:
        width, heads = d_model, max(1, d_model // 64)
    if n_head is not None:
        heads = n_head
    if width % heads:
        given = "--d-model" if d_model is not None else f"preset {preset}'s width"
        raise ParamError(f"{given} {width} is not divisible by {heads} attention heads "
                         f"(head size {width / heads:g}); choose a width that is a multiple of the head count "
                         "or set --n-head")
    return width, layers, heads


@register_component("transformer-lm", unit="tok", family="ssm", params=[
    PRESET,
    Param("seq_len", int, 1024, "Prompt length (prefill) or context length held in the KV cache (decode).", low=1,
          high=MAX_TOKENS),
    LM_MODE, HEAD, NEW_TOKENS, RUNS,
    Param("n_layer", int, None, "Layers (none = half of Mamba's: Pythia's depth, parameter-matched; e.g. 24 for "
          "the same depth as mamba-130m).", low=1, high=MAX_LAYERS, optional=True),
    Param("d_model", int, None, "Override the width (none = the preset's); heads must divide it.", low=1,
          high=MAX_WIDTH, optional=True),
    Param("n_head", int, None, "Attention heads (none = the preset's, or d_model / 64 with --d-model); must "
          "divide the width.", low=1, high=MAX_WIDTH, optional=True),
])
def transformer_lm(ctx: BuildContext, preset, seq_len, mode, head, new_tokens, runs, n_layer, d_model, n_head):
    """Transformer LM of Mamba's size class (transformers GPTNeoXModel, Pythia layout, SDPA) to compare with."""
    width, layers, heads = transformer_shape(preset, d_model, n_head)
    from transformers import GPTNeoXConfig, GPTNeoXModel

    layers = n_layer or layers
    config = GPTNeoXConfig(vocab_size=MAMBA_PRESETS[preset].padded_vocab_size, hidden_size=width,
                           num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
                           max_position_embeddings=max(2048, seq_len + 1), tie_word_embeddings=True,
                           use_parallel_residual=True, attn_implementation="sdpa")
    with torch.device(ctx.device):
        model = GPTNeoXModel(config)
    head = head or mode == "generate"  # generation needs the logits
    module = TransformerLM(model.to(dtype=ctx.dtype), head).eval()
    vocab = config.vocab_size
    elem = torch.empty((), dtype=ctx.dtype).element_size()

    def prefill(carry):  # the prompt -> hidden states or the last position's logits; generate fills a fresh cache
        ids, cache = carry
        if mode == "generate":
            cache.fresh()
            return module(ids, cache.kv)
        return module(ids)

    def fill(cache, batch, length):
        cache.kv = output_cache(model(input_ids=random_tokens(vocab, batch, length, ctx.device), use_cache=True))

    def decode_call(token, cache, position):
        truncate_kv_cache(cache.kv, seq_len)  # every timed step decodes at the same context
        return module(token, cache.kv)

    def cache_facts(cache, tokens):
        if cache.kv is not None and mode == "decode":
            truncate_kv_cache(cache.kv, seq_len)
            return {"kv_cache_mib": kv_cache_bytes(cache.kv) / MIB}
        return {"kv_cache_mib": 2 * layers * cache.batch * seq_len * width * elem / MIB}

    info: dict[str, Any] = {"scan_backend": None, "conv_backend": None, "lm_head": head,
                            "attention": getattr(model.config, "_attn_implementation", None), "d_model": width,
                            "n_layer": layers, "n_head": heads, "vocab_size": vocab, "context_len": seq_len}
    rotary = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor",
                                                                 getattr(config, "rotary_pct", 0.25))
    neox = NeoXShape(layers, width, heads, config.intermediate_size, vocab, rotary)
    parts = LMParts(module, [Stage("prefill", prefill, module)], lambda b: (random_tokens(vocab, b, seq_len, ctx.device),),
                    seq_len, lambda batch, capacity: DynamicKV(batch), lambda token, position, cache: module(token, cache.kv),
                    fill, vocab, info, decode_call=decode_call, cache_facts=cache_facts,
                    no_step_graph="transformers' DynamicCache grows by a token every step (new shapes each step)",
                    estimate={m: lm_estimate(neox, m, seq_len, head) for m in ("prefill", "decode")})
    return lm_scenario(parts, mode, ctx, new_tokens, seq_len, runs)


class DynamicKV:
    """A transformers DynamicCache of `batch` sequences, made afresh for every generation (it grows as it decodes)."""

    def __init__(self, batch: int):
        self.batch, self.kv = batch, None

    def fresh(self) -> None:
        from transformers import DynamicCache

        self.kv = DynamicCache()
