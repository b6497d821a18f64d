"""The Transformer language model effprof compares Mamba with, and helpers for transformers' KV cache."""
from __future__ import annotations

import inspect

import torch.nn.functional as F
from torch import nn


class TransformerLM(nn.Module):
    """A GPTNeoXModel with an optional tied LM head: ids (batch, L) -> hidden (batch, L, d) or logits (batch, 1, V)."""

    def __init__(self, model: nn.Module, head: bool):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, past_key_values=None):
        hidden = self.model(input_ids=input_ids, **{cache_keyword(self.model): past_key_values},
                            use_cache=past_key_values is not None).last_hidden_state
        if not self.head:
            return hidden
        return F.linear(hidden[:, -1:], self.model.embed_in.weight)


def cache_keyword(model: nn.Module) -> str:
    """The forward's KV-cache argument: `cache` (transformers >= 5.2x; `past_key_values` is deprecated and goes
    away in 5.40), else `past_key_values` (older 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache a forward with use_cache=True returned: `output.cache`, or `past_key_values` before the
    rename (reading the old name on a newer version warns, so the new one is read first)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def kv_cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def truncate_kv_cache(cache, length: int) -> None:
    """Cut a transformers DynamicCache back to `length` tokens (views, no copy)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
