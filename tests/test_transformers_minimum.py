"""The transformers that pyproject.toml admits has the KV-cache API effprof uses.

The minimum was found by running effprof's cache code on released versions: DynamicCache's per-layer
`layers[i].keys/.values` (transformer-lm decode) first runs on 4.54.0 (4.53.3 has no `layers`); the
`llava` component's static cache needs `StaticLayer.lazy_initialization(keys, values)` (5.0; 4.57.6 takes
keys only) and its prefill and decode (`effprof run llava --preset tiny --mode prefill|decode`) first run on
5.4.0 (5.0.0, 5.2.0, 5.3.0: "index_copy_(): index 80 is out of bounds", the cache update writes past its
end). This test checks that the installed version is at least the declared minimum and that both calls
exist and behave as effprof assumes.
"""
import inspect
import re
from importlib import metadata
from pathlib import Path

import torch
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def declared_minimum() -> Version:
    text = (ROOT / "pyproject.toml").read_text()
    return Version(re.search(r'"transformers>=([0-9][0-9.]*)[,"]', text).group(1))


def declared_bound() -> Version:
    """The exclusive upper bound of the tested range (pyproject: "transformers>=5.4,<6")."""
    text = (ROOT / "pyproject.toml").read_text()
    return Version(re.search(r'"transformers>=[0-9.]+,<([0-9][0-9.]*)"', text).group(1))


def test_installed_transformers_meets_the_declared_minimum():
    assert declared_minimum() >= Version("5.4")  # the oldest version both cache paths run on (module docstring)
    assert declared_minimum() <= Version(metadata.version("transformers")) < declared_bound()


def test_dynamic_cache_layers_hold_keys_and_values_that_truncate_and_count():
    from transformers import GPTNeoXConfig, GPTNeoXModel

    from effprof.models.transformer_lm import cache_keyword, kv_cache_bytes, output_cache, truncate_kv_cache

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    model = GPTNeoXModel(config).eval()
    with torch.no_grad():
        cache = output_cache(model(input_ids=torch.randint(0, 64, (1, 8)), use_cache=True))
        assert [tuple(layer.keys.shape) for layer in cache.layers] == [(1, 2, 8, 16)] * 2
        model(input_ids=torch.randint(0, 64, (1, 1)), **{cache_keyword(model): cache}, use_cache=True)
        assert cache.layers[0].keys.shape[2] == 9  # a decode step appends one position
        truncate_kv_cache(cache, 8)
    assert kv_cache_bytes(cache) == 2 * 2 * (1 * 2 * 8 * 16) * 4  # layers × (keys, values) × fp32 bytes


def test_static_cache_layers_initialise_from_keys_and_values():
    from transformers.cache_utils import StaticLayer

    assert list(inspect.signature(StaticLayer.lazy_initialization).parameters)[1:3] == ["key_states", "value_states"]
