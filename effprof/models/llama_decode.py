"""A decode-only forward of transformers' Llama LM (one new token per sequence against a static KV cache),
with fewer and larger kernels than `LlamaModel.forward`, on the model's own modules and weights.

`fuse_projections(lm)` concatenates each layer's q/k/v weights into one tensor and gate/up into another,
and rebinds every original `nn.Linear.weight` as a view into the fused tensor: no extra memory, the same
parameter names and values in `state_dict`, and transformers' own forward (the prefill) still runs on the
same storage. `LlamaDecodeStep` then runs a decode step per layer as

    RMSNorm -> one qkv GEMV -> rotary (q and k together) -> cache write at `position` -> SDPA
    -> o_proj + residual -> RMSNorm -> one gate_up GEMV -> SiLU * up -> down + residual

which is `LlamaDecoderLayer`'s arithmetic in the same order and dtypes (the logits agree with transformers'
to rounding; tests/test_llama_decode.py), eager, inside a CUDA graph, or under `torch.compile` (where
Inductor fuses what lies between the GEMVs). The GEMVs go through `effprof.ops.gemv` with `backend`:
"ref" (F.linear, i.e. cuBLAS, with the norm, SiLU * up and residual adds as torch ops, SDPA) or "triton"
(effprof's kernels: norm -> qkv, rotary + cache write, split-KV attention over the slots 0..position,
o_proj + residual, norm -> gate_up -> SiLU * up, down + residual: six kernels per layer, plus the merge of
the attention's splits). Its reference is transformers' own forward of the same step
(`LlavaPipeline.decode` with `decode_impl="transformers"`), which the tests hold it against.

What the fast path needs of the model (else `fusable` says why not and the transformers path runs): a
Llama-style `LlamaModel` (q/k/v/o and gate/up/down Linears, RMSNorm modules with `variance_epsilon`), the
weights of one layer's q/k/v (and gate/up) on one device in one dtype.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effprof.ops.decode_attention import decode_attention
from effprof.ops.gemv import gemv
from effprof.ops.rotary_cache import rotary_cache, signed_sin


def fusable(lm: nn.Module) -> str | None:
    """None when `fuse_projections` / `LlamaDecodeStep` apply to `lm`; else the reason, in a few words."""
    layers = getattr(lm, "layers", None)
    if layers is None or not hasattr(lm, "rotary_emb") or not hasattr(lm, "embed_tokens"):
        return f"{type(lm).__name__} is not a Llama-style decoder"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        if attn is None or mlp is None or not all(isinstance(getattr(attn, n, None), nn.Linear) for n in names):
            return f"{type(layer).__name__} has no q/k/v/o Linears"
        if not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            return f"{type(layer).__name__} has no gate/up/down Linears"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not hasattr(norm, "variance_epsilon"):
                return f"{type(norm).__name__} is not an RMSNorm"
        weights = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, mlp.gate_proj.weight]
        if len({(w.device, w.dtype) for w in weights}) != 1:
            return "one layer's projections on different devices or in different dtypes"
    return None


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One (sum of out_features, in_features) weight (and bias) whose row blocks are the Linears' weights,
    which become views of it. Already fused (consecutive views of one storage): that storage, untouched."""
    weights = [lin.weight for lin in linears]
    base = weights[0]
    rows = sum(w.shape[0] for w in weights)
    fused_already = (all(w.is_contiguous() for w in weights)
                     and all(w.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for w in weights)
                     and all(b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()
                             for a, b in zip(weights, weights[1:])))
    with torch.no_grad():
        if fused_already:
            weight = base.detach().as_strided((rows, base.shape[1]), base.stride(), base.storage_offset())
        else:
            weight = torch.cat([w.detach() for w in weights])
            start = 0
            for lin in linears:
                n = lin.weight.shape[0]
                lin.weight = nn.Parameter(weight[start:start + n], requires_grad=lin.weight.requires_grad)
                start += n
        bias = None
        if any(lin.bias is not None for lin in linears):
            bias = torch.cat([lin.bias.detach() if lin.bias is not None
                              else torch.zeros(lin.out_features, device=weight.device, dtype=weight.dtype)
                              for lin in linears])
    return weight, bias


def fuse_projections(lm: nn.Module) -> list[dict[str, Any]]:
    """Fuse every layer's q/k/v and gate/up weights in place (see the module docstring); per layer the fused
    tensors {"qkv": (W, b), "gate_up": (W, b)}. Idempotent: a second call finds the views and reuses them."""
    fused = []
    for layer in lm.layers:
        attn, mlp = layer.self_attn, layer.mlp
        fused.append({"qkv": _fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                      "gate_up": _fuse([mlp.gate_proj, mlp.up_proj])})
    return fused


class LlamaDecodeStep:
    """One decode step of a transformers `LlamaModel` (+ `lm_head`) on fused projections.

    `__call__(token_ids (B, 1), keys, values, position (1, 1) long, mask)` returns the logits (B, 1, vocab),
    writing the new token's keys/values into slot `position` of `keys[i]` / `values[i]` (B, kv_heads,
    slots, head_dim) of every layer i. `mask` is None when every slot is valid (the step fills the last
    one; SDPA takes its flash kernel) or a boolean (1, 1, 1, slots) mask of the valid slots, which must be
0..position (as LlavaPipeline's are): the triton backend reads that range from `position` instead. Nothing in the
    step reads a length on the host, so it can be captured in a CUDA graph and replayed as `position`
    advances."""

    def __init__(self, lm: nn.Module, lm_head: nn.Module, backend: str = "ref"):
        reason = fusable(lm)
        if reason is not None:
            raise ValueError(f"fused decode: {reason}")
        self.lm, self.lm_head, self.backend = lm, lm_head, backend
        self.fused = fuse_projections(lm)
        config = lm.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.silu_mul = getattr(config, "hidden_act", None) == "silu"  # else act_fn(gate) * up op by op

    def _layer(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sin_signed: torch.Tensor,
               keys: torch.Tensor,
               values: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        layer = self.lm.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        batch, heads, kv_heads, dim = x.shape[0], self.heads, self.kv_heads, self.head_dim
        norm1, norm2, backend = layer.input_layernorm, layer.post_attention_layernorm, self.backend
        qkv = gemv(x, *self.fused[i]["qkv"], norm_weight=norm1.weight, eps=norm1.variance_epsilon, backend=backend)
        q = rotary_cache(qkv, cos, sin, keys, values, slot, heads, backend, sin_signed)
        if backend == "triton":  # split-KV over the slots 0..position (what `mask` allows, None or not)
            out = decode_attention(q, keys, values, slot, attn.scaling, backend)
        else:
            gqa = {"enable_gqa": True} if kv_heads != heads else {}
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling, **gqa)
        x = gemv(out.transpose(1, 2).reshape(batch, 1, heads * dim), attn.o_proj.weight, attn.o_proj.bias,
                 residual=x, backend=backend)
        if self.silu_mul:
            h = gemv(x, *self.fused[i]["gate_up"], norm_weight=norm2.weight, eps=norm2.variance_epsilon, silu_mul=True,
                     backend=backend)
        else:
            gate, up = gemv(x, *self.fused[i]["gate_up"], norm_weight=norm2.weight, eps=norm2.variance_epsilon,
                            backend=backend).chunk(2, -1)
            h = mlp.act_fn(gate) * up
        return gemv(h, mlp.down_proj.weight, mlp.down_proj.bias, residual=x, backend=backend)

    def hidden(self, token_ids: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
               position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The final-norm hidden state (B, 1, width) of the step."""
        x = self.lm.embed_tokens(token_ids)
        cos, sin = self.lm.rotary_emb(x, position_ids=position)               # (1, 1, d)
        sin_signed = signed_sin(sin)  # once per step for every layer's reference rotary
        slot = position.view(-1)
        for i in range(len(self.lm.layers)):
            x = self._layer(i, x, cos, sin, sin_signed, keys[i], values[i], slot, mask)
        return self.lm.norm(x)

    def __call__(self, token_ids, keys, values, position, mask=None) -> torch.Tensor:
        return self.lm_head(self.hidden(token_ids, keys, values, position, mask))
