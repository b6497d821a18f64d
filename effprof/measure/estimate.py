"""An analytic cost model of a Llama-style LM's prefill and decode, beside the measurement.

The method of LLM-Viewer (Yuan et al., "LLM Inference Unveiled: Survey and Roofline Model Insights", 2024),
the tool behind the LLaVA-PruMerge cost table: every operation of a decoder layer gets its operations and
the bytes it must move (weights read once, activations read and written once, the KV cache read and
appended), its arithmetic intensity, and a time bound on the device's ceilings,
max(FLOPs / peak FLOP/s, bytes / bandwidth); the layer is the sum of its operations, the model the sum of
its layers plus the LM head on the positions whose logits are needed (the last one).

Conventions (the same as effprof's measurement, so the two can be compared):
- FLOPs = 2 × MAC of the matrix products (projections, MLP, QKᵀ and AV over the full query × key range, as
  FlopCounterMode counts SDPA, and the LM head); these must equal FlopCounterMode's count of the same call
  (tested). Elementwise work (norms, rotary, softmax, SiLU·gate, residual adds) is listed apart in
  `elementwise_ops` (LLM-Viewer's per-element charges: norm 7, softmax 5, SiLU·gate 5, add 1) and takes
  part only in the bytes and the bound.
- Weights in `weight_bytes` bytes per parameter: 2 (fp16/bf16), 1 (int8), 0.5 (int4). int8/int4 rows are
  weight-only quantisation, ANALYTIC: the matrix products still run at the 16-bit rate and the
  dequantisation is free. Activations and the KV cache in 2 bytes.
- Everything is per call for the whole batch; times in ms on the ceilings given (measured by `effprof
  calibrate`, or a datasheet's: the result says which).
What it does not model: kernel launch and host time (the gap an eager batch-1 model shows), attention
kernels that re-read K/V, L2 reuse between operations, fused kernels that skip intermediate writes.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
ACT_BYTES = 2.0


@dataclass(frozen=True)
class LlamaShape:
    """What the model needs to know of a Llama-style LM (SwiGLU MLP, RMSNorm, rotary, untied head)."""

    layers: int
    width: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass
class OpCost:
    name: str
    flops: float            # 2 × MAC of matrix products (0 for elementwise operations)
    elementwise_ops: float  # LLM-Viewer's elementwise charge
    weight_bytes: float
    act_bytes: float        # activations read + written
    kv_bytes: float         # KV cache read + written

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.act_bytes + self.kv_bytes

    def bound_ms(self, peak_tflops: float, bandwidth_gb_per_s: float) -> float:
        compute = (self.flops + self.elementwise_ops) / (peak_tflops * 1e9)
        memory = self.bytes / (bandwidth_gb_per_s * 1e6)
        return max(compute, memory)

    def bound(self, peak_tflops: float, bandwidth_gb_per_s: float) -> str:
        compute = (self.flops + self.elementwise_ops) / (peak_tflops * 1e9)
        return "compute" if compute >= self.bytes / (bandwidth_gb_per_s * 1e6) else "memory"


def layer_ops(shape: LlamaShape, batch: int, q_len: int, kv_len: int, weight: str = "bf16") -> list[OpCost]:
    """The operations of one decoder layer for `q_len` new positions attending to `kv_len` positions."""
    wb, a = WEIGHT_BYTES[weight], ACT_BYTES
    b, s, d, f = batch, q_len, shape.width, shape.ffn
    kv_d = shape.kv_heads * shape.head_dim
    tokens = b * s

    def linear(name, n_in, n_out):
        return OpCost(name, 2 * tokens * n_in * n_out, 0, n_in * n_out * wb, tokens * (n_in + n_out) * a, 0)

    attention_elems = b * shape.heads * s * kv_len
    kv_cache = 2 * b * kv_len * kv_d * a  # K and V of every position read once
    kv_append = 2 * b * s * kv_d * a
    return [
        OpCost("input_norm", 0, 7 * tokens * d, d * wb, 2 * tokens * d * a, 0),
        linear("q_proj", d, d), linear("k_proj", d, kv_d), linear("v_proj", d, kv_d),
        OpCost("rotary", 0, 4 * tokens * (d + kv_d), 0, 2 * tokens * (d + kv_d) * a, 0),
        OpCost("kv_append", 0, 0, 0, 0, kv_append),
        OpCost("qk_matmul", 2 * attention_elems * shape.head_dim, 0, 0, tokens * d * a + attention_elems * a,
               kv_cache / 2),
        OpCost("softmax", 0, 5 * attention_elems, 0, 2 * attention_elems * a, 0),
        OpCost("sv_matmul", 2 * attention_elems * shape.head_dim, 0, 0, attention_elems * a + tokens * d * a,
               kv_cache / 2),
        linear("o_proj", d, d),
        OpCost("attn_add", 0, tokens * d, 0, 3 * tokens * d * a, 0),
        OpCost("post_norm", 0, 7 * tokens * d, d * wb, 2 * tokens * d * a, 0),
        linear("gate_proj", d, f), linear("up_proj", d, f),
        OpCost("silu_mul", 0, 5 * tokens * f, 0, 3 * tokens * f * a, 0),
        linear("down_proj", f, d),
        OpCost("mlp_add", 0, tokens * d, 0, 3 * tokens * d * a, 0),
    ]


def head_ops(shape: LlamaShape, batch: int, positions: int, weight: str = "bf16") -> list[OpCost]:
    """The final norm and the LM head on `positions` positions per sequence (1: the next token's logits)."""
    wb, a, d = WEIGHT_BYTES[weight], ACT_BYTES, shape.width
    tokens = batch * positions
    return [OpCost("final_norm", 0, 7 * tokens * d, d * wb, 2 * tokens * d * a, 0),
            OpCost("lm_head", 2 * tokens * d * shape.vocab, 0, d * shape.vocab * wb,
                   tokens * (d + shape.vocab) * a, 0)]


@dataclass
class StageEstimate:
    stage: str              # "prefill" | "decode"
    weight: str
    layer: list[OpCost]     # one layer's operations (every layer is the same)
    head: list[OpCost]
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


def estimate(shape: LlamaShape, stage: str, batch: int, tokens: int, weight: str = "bf16") -> StageEstimate:
    """`prefill` of `tokens` positions from an empty cache, or `decode` of one token at a context of `tokens`."""
    if stage == "prefill":
        return StageEstimate(stage, weight, layer_ops(shape, batch, tokens, tokens, weight),
                             head_ops(shape, batch, 1, weight), shape.layers)
    if stage == "decode":
        return StageEstimate(stage, weight, layer_ops(shape, batch, 1, tokens + 1, weight),
                             head_ops(shape, batch, 1, weight), shape.layers)
    raise ValueError(f"stage must be prefill or decode, got {stage!r}")
