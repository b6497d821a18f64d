"""The Transformer language model effprof compares Mamba with, and helpers for transformers' KV cache."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class TransformerLM(nn.Module):
    """A GPTNeoXModel with an optional tied LM head: ids (batch, L) -> hidden (batch, L, d) or logits (batch, 1, V)."""

    def __init__(self, model: nn.Module, head: bool):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, past_key_values=None):
        hidden = self.model(input_ids=input_ids, past_key_values=past_key_values,
                            use_cache=past_key_values is not None).last_hidden_state
        if not self.head:
            return hidden
        return F.linear(hidden[:, -1:], self.model.embed_in.weight)


def kv_cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def truncate_kv_cache(cache, length: int) -> None:
    """Cut a transformers DynamicCache back to `length` tokens (views, no copy)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]
