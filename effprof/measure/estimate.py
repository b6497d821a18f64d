"""An analytic cost model of an LM's prefill and decode, beside the measurement: the Llama-style decoder
of LLaVA (`LlamaShape`), the GPT-NeoX (Pythia) decoder of `transformer-lm` (`NeoXShape`) and the Mamba LM
of `mamba-lm` and Cobra (`MambaShape`).

The method of LLM-Viewer (Yuan et al., "LLM Inference Unveiled: Survey and Roofline Model Insights", 2024),
the tool behind the LLaVA-PruMerge cost table: every operation of a layer gets its operations and the bytes
it must move (weights read once, activations read and written once, the KV cache or SSM state read and
written), its arithmetic intensity, and a time bound on the device's ceilings,
max(FLOPs / peak FLOP/s, bytes / bandwidth); the layer is the sum of its operations, the model the sum of
its layers plus the final norm and the LM head on the positions whose logits are needed (the last one, or
none for a backbone-only row: `head=False`).

Conventions (the same as effprof's measurement, so the two can be compared):
- FLOPs = 2 × MAC of the matrix products (projections, MLP, QKᵀ and AV over the full query × key range, as
  FlopCounterMode counts SDPA, and the LM head) and the FLOP formulas effprof registers for Mamba's ops
  (the depthwise causal conv 2·B·L·E·K, the selective scan 9·B·L·E·N + 2·B·L·E: `effprof.ops`); these must
  equal FlopCounterMode's count of the same call (tested for llava, transformer-lm, mamba-lm and cobra).
  Elementwise work (norms, rotary, softmax, SiLU/GELU, softplus, residual adds) is listed apart in
  `elementwise_ops` (LLM-Viewer's per-element charges: norm 7, softmax 5, SiLU·gate 5, add 1; effprof
  charges GELU and softplus 5 as SiLU) and takes part only in the bytes and the bound.
- Weights in `weight_bytes` bytes per parameter: 2 (fp16/bf16), 1 (int8), 0.5 (int4). int8/int4 rows are
  weight-only quantisation, ANALYTIC: the matrix products still run at the 16-bit rate and the
  dequantisation is free. Activations and the KV cache in 2 bytes; Mamba's SSM state, A_log and D in fp32
  (4 bytes), as effprof's Mamba keeps them; its residual stream in fp32.
- Mamba's state is constant in the context: a decode step reads and writes it (conv state B·E·K, SSM state
  B·E·N per layer), a prefill writes it once. A decode step of Mamba thus moves the weights plus the state.
- Everything is per call for the whole batch; times in ms on the ceilings given (measured by `effprof
  calibrate`, or a datasheet's: the result says which).
What it does not model: kernel launch and host time (the gap an eager batch-1 model shows), attention
kernels that re-read K/V, L2 reuse between operations, fused kernels that skip intermediate writes, a
KV cache that appends by copying (transformers' DynamicCache, which `transformer-lm` decodes with), and
the selective scan's intermediate reads of a non-fused (reference) path.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
ACT_BYTES = 2.0
FP32_BYTES = 4.0


@dataclass
class OpCost:
    name: str
    flops: float            # 2 × MAC of matrix products (0 for elementwise operations)
    elementwise_ops: float  # LLM-Viewer's elementwise charge
    weight_bytes: float
    act_bytes: float        # activations read + written
    cache_bytes: float      # KV cache or SSM state read + written

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.act_bytes + self.cache_bytes

    def bound_ms(self, peak_tflops: float, bandwidth_gb_per_s: float) -> float:
        compute = (self.flops + self.elementwise_ops) / (peak_tflops * 1e9)
        memory = self.bytes / (bandwidth_gb_per_s * 1e6)
        return max(compute, memory)

    def bound(self, peak_tflops: float, bandwidth_gb_per_s: float) -> str:
        compute = (self.flops + self.elementwise_ops) / (peak_tflops * 1e9)
        return "compute" if compute >= self.bytes / (bandwidth_gb_per_s * 1e6) else "memory"


def _linear(name: str, tokens: int, n_in: int, n_out: int, wb: float, bias: bool = False) -> OpCost:
    """A matrix product of `tokens` rows (the bias, if any, is read with the weights and not counted as FLOPs,
    as FlopCounterMode counts addmm)."""
    return OpCost(name, 2 * tokens * n_in * n_out, 0, (n_in * n_out + (n_out if bias else 0)) * wb,
                  tokens * (n_in + n_out) * ACT_BYTES, 0)


def _norm(name: str, tokens: int, width: int, wb: float, bias: bool = False) -> OpCost:
    return OpCost(name, 0, 7 * tokens * width, width * (2 if bias else 1) * wb, 2 * tokens * width * ACT_BYTES, 0)


def _attention(batch: int, q_len: int, kv_len: int, heads: int, head_dim: int, kv_width: int) -> list[OpCost]:
    """KV append, QKᵀ, softmax and AV of `q_len` new positions over `kv_len` positions (full range)."""
    a, tokens, width = ACT_BYTES, batch * q_len, heads * head_dim
    elems = batch * heads * q_len * kv_len
    kv_cache = 2 * batch * kv_len * kv_width * a  # K and V of every position read once
    return [
        OpCost("kv_append", 0, 0, 0, 0, 2 * batch * q_len * kv_width * a),
        OpCost("qk_matmul", 2 * elems * head_dim, 0, 0, tokens * width * a + elems * a, kv_cache / 2),
        OpCost("softmax", 0, 5 * elems, 0, 2 * elems * a, 0),
        OpCost("sv_matmul", 2 * elems * head_dim, 0, 0, elems * a + tokens * width * a, kv_cache / 2),
    ]


def _lm_head(batch: int, q_len: int, positions: int, width: int, vocab: int, wb: float,
             norm_bias: bool = False) -> list[OpCost]:
    """The final norm over the new positions and the LM head on `positions` of them (0: a backbone-only row)."""
    ops = [_norm("final_norm", batch * q_len, width, wb, norm_bias)]
    if positions:
        ops.append(_linear("lm_head", batch * positions, width, vocab, wb))
    return ops


@dataclass(frozen=True)
class LlamaShape:
    """What the model needs to know of a Llama-style LM (SwiGLU MLP, RMSNorm, rotary, untied head)."""

    layers: int
    width: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    cache_name = "KV"

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def layer_ops(self, batch: int, q_len: int, kv_len: int, weight: str) -> list[OpCost]:
        wb, a = WEIGHT_BYTES[weight], ACT_BYTES
        d, f, tokens = self.width, self.ffn, batch * q_len
        kv_d = self.kv_heads * self.head_dim
        return [
            _norm("input_norm", tokens, d, wb),
            _linear("q_proj", tokens, d, d, wb), _linear("k_proj", tokens, d, kv_d, wb),
            _linear("v_proj", tokens, d, kv_d, wb),
            OpCost("rotary", 0, 4 * tokens * (d + kv_d), 0, 2 * tokens * (d + kv_d) * a, 0),
            *_attention(batch, q_len, kv_len, self.heads, self.head_dim, kv_d),
            _linear("o_proj", tokens, d, d, wb),
            OpCost("attn_add", 0, tokens * d, 0, 3 * tokens * d * a, 0),
            _norm("post_norm", tokens, d, wb),
            _linear("gate_proj", tokens, d, f, wb), _linear("up_proj", tokens, d, f, wb),
            OpCost("silu_mul", 0, 5 * tokens * f, 0, 3 * tokens * f * a, 0),
            _linear("down_proj", tokens, f, d, wb),
            OpCost("mlp_add", 0, tokens * d, 0, 3 * tokens * d * a, 0),
        ]

    def model_ops(self, batch: int, q_len: int, positions: int, weight: str) -> list[OpCost]:
        return _lm_head(batch, q_len, positions, self.width, self.vocab, WEIGHT_BYTES[weight])


@dataclass(frozen=True)
class NeoXShape:
    """GPT-NeoX (Pythia, `transformer-lm`): fused QKV with biases, LayerNorm, rotary on `rotary_fraction` of
    each head, a GELU MLP of `ffn`, parallel residual (x + attn(ln1 x) + mlp(ln2 x)), tied head."""

    layers: int
    width: int
    heads: int
    ffn: int
    vocab: int
    rotary_fraction: float = 0.25
    cache_name = "KV"

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def rotary_dims(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    def layer_ops(self, batch: int, q_len: int, kv_len: int, weight: str) -> list[OpCost]:
        wb, a = WEIGHT_BYTES[weight], ACT_BYTES
        d, f, tokens = self.width, self.ffn, batch * q_len
        rotated = 2 * self.heads * self.rotary_dims  # q and k
        return [
            _norm("input_layernorm", tokens, d, wb, bias=True),
            _linear("query_key_value", tokens, d, 3 * d, wb, bias=True),
            OpCost("rotary", 0, 4 * tokens * rotated, 0, 2 * tokens * rotated * a, 0),
            *_attention(batch, q_len, kv_len, self.heads, self.head_dim, d),
            _linear("dense", tokens, d, d, wb, bias=True),
            _norm("post_attention_layernorm", tokens, d, wb, bias=True),
            _linear("dense_h_to_4h", tokens, d, f, wb, bias=True),
            OpCost("gelu", 0, 5 * tokens * f, 0, 2 * tokens * f * a, 0),
            _linear("dense_4h_to_h", tokens, f, d, wb, bias=True),
            OpCost("residual_add", 0, 2 * tokens * d, 0, 4 * tokens * d * a, 0),
        ]

    def model_ops(self, batch: int, q_len: int, positions: int, weight: str) -> list[OpCost]:
        return _lm_head(batch, q_len, positions, self.width, self.vocab, WEIGHT_BYTES[weight], norm_bias=True)


@dataclass(frozen=True)
class MambaShape:
    """A Mamba-1 LM (mamba-ssm's MambaLMHeadModel; `mamba-lm`, Cobra's LM): per layer RMSNorm and the mixer
    (in_proj to x and z, causal depthwise conv1d + SiLU, x_proj to (dt, B, C), dt_proj, the selective scan
    with D skip and SiLU(z) gate, out_proj); d_inner = E, d_state = N, d_conv = K, dt_rank = R."""

    layers: int
    width: int
    d_inner: int
    d_state: int
    d_conv: int
    dt_rank: int
    vocab: int
    conv_bias: bool = True
    bias: bool = False
    cache_name = "state"

    def layer_ops(self, batch: int, q_len: int, kv_len: int, weight: str) -> list[OpCost]:
        """`kv_len` is unused: the state is the same size at any context. q_len 1 is a decode step (reads and
        writes the state); longer is a prefill (writes it)."""
        wb, a, fp32 = WEIGHT_BYTES[weight], ACT_BYTES, FP32_BYTES
        d, e, n, k, r, tokens = self.width, self.d_inner, self.d_state, self.d_conv, self.dt_rank, batch * q_len
        state_moves = 2 if q_len == 1 else 1
        conv_state, ssm_state = batch * e * k * a, batch * e * n * fp32
        return [
            _norm("norm", tokens, d, wb),
            _linear("in_proj", tokens, d, 2 * e, wb, self.bias),
            OpCost("conv1d", 2 * tokens * e * k, 5 * tokens * e, (e * k + (e if self.conv_bias else 0)) * wb,
                   2 * tokens * e * a, state_moves * conv_state),
            _linear("x_proj", tokens, e, r + 2 * n, wb),
            _linear("dt_proj", tokens, r, e, wb, bias=True),
            # 9·B·L·E·N for the recurrence, + B·L·E for D, + B·L·E for the z gate (effprof.ops.selective_scan);
            # reads x, delta, z (E each), B, C (N each), writes y (E); softplus(delta + bias) charged apart
            OpCost("selective_scan", 9 * tokens * e * n + 2 * tokens * e, 5 * tokens * e, (e * n + e) * fp32,
                   tokens * (4 * e + 2 * n) * a, state_moves * ssm_state),
            _linear("out_proj", tokens, e, d, wb, self.bias),
            OpCost("residual_add", 0, tokens * d, 0, tokens * d * (a + 2 * fp32), 0),
        ]

    def model_ops(self, batch: int, q_len: int, positions: int, weight: str) -> list[OpCost]:
        return _lm_head(batch, q_len, positions, self.width, self.vocab, WEIGHT_BYTES[weight])

    def state_bytes(self, batch: int) -> float:
        """The decoding state (conv + SSM) of all layers, bytes."""
        return self.layers * batch * self.d_inner * (self.d_conv * ACT_BYTES + self.d_state * FP32_BYTES)


@dataclass
class StageEstimate:
    stage: str              # "prefill" | "decode"
    weight: str
    layer: list[OpCost]     # one layer's operations (every layer is the same)
    head: list[OpCost]      # once per model: the final norm and the LM head
    layers: int

    def total(self, attr: str) -> float:
        per_layer = sum(getattr(op, attr) for op in self.layer)
        return self.layers * per_layer + sum(getattr(op, attr) for op in self.head)

    @property
    def flops(self) -> float:
        return self.total("flops")

    @property
    def bytes(self) -> float:
        return self.total("bytes")

    def bound_ms(self, peak_tflops: float, bandwidth_gb_per_s: float) -> float:
        per_layer = sum(op.bound_ms(peak_tflops, bandwidth_gb_per_s) for op in self.layer)
        return self.layers * per_layer + sum(op.bound_ms(peak_tflops, bandwidth_gb_per_s) for op in self.head)


def estimate(shape, stage: str, batch: int, tokens: int, weight: str = "bf16", head: bool = True,
             kv_tokens: int | None = None) -> StageEstimate:
    """`prefill` of `tokens` positions from an empty cache, or `decode` of one token at a context of `tokens`;
    `head`: the LM head on the last position (False: the backbone only, as `mamba-lm`/`transformer-lm` time
    by default). `kv_tokens`: a prefill's attention range where it differs from `tokens` (a static cache
    sized for the unreduced prompt that a token reducer shortened: SDPA attends over all its slots)."""
    if stage == "prefill":
        q_len, kv_len = tokens, kv_tokens or tokens
    elif stage == "decode":
        q_len, kv_len = 1, tokens + 1
    else:
        raise ValueError(f"stage must be prefill or decode, got {stage!r}")
    return StageEstimate(stage, weight, shape.layer_ops(batch, q_len, kv_len, weight),
                         shape.model_ops(batch, q_len, 1 if head else 0, weight), shape.layers)
