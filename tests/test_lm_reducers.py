"""LM-side reducers on a tiny transformers Llama: the prefill loop against the model, the scoring rows
against the model's own attention maps, the kept sets against the scores, the published token schedules."""
import pytest
import torch

from effprof.modules.reducers.lm_prefill import (IMAGE, Sequence, attention_rows, initial_sequence, keep_top_image,
                                                 prefill_with_drops)
from effprof.modules.reducers.lm_reducers import FastV, PyramidDrop, SparseVLM, dpc_knn_merge
from effprof.reducers import get_reducer

PREFIX, IMAGES, SUFFIX = 3, 576, 6


def tiny_llama(layers=4, attn="sdpa", seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=97, max_position_embeddings=1024)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


def prompt(batch=2, images=IMAGES, seed=1):
    torch.manual_seed(seed)
    length = PREFIX + images + SUFFIX
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, PREFIX:PREFIX + images] = True
    return torch.randn(batch, length, 32), mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefill_without_drops_equals_the_unreduced_model(attn):
    lm = tiny_llama(attn=attn)
    embeds, mask = prompt(images=20)
    with torch.inference_mode():
        expected = lm(inputs_embeds=embeds, output_hidden_states=True)
        mine = prefill_with_drops(lm, embeds, mask)
        kept_all = FastV(k=1, ratio=0.0).prefill(lm, embeds, mask)      # a drop stage that drops nothing
    torch.testing.assert_close(mine.hidden, expected.hidden_states[-1][:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.logits, expected.logits[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kept_all.logits, expected.logits[:, -1], rtol=1e-5, atol=1e-5)
    assert mine.tokens_per_layer == [PREFIX + 20 + SUFFIX] * 4


def test_attention_rows_equal_the_models_attention_maps():
    lm = tiny_llama(attn="eager")
    embeds, mask = prompt(images=20)
    with torch.inference_mode():
        out = lm(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
        seq = initial_sequence(embeds, mask, None)
        layer = lm.model.layers[1]
        pos = lm.model.rotary_emb(embeds, seq.position_ids)
        rows = torch.tensor([[5, 28], [0, 28]])
        mine = attention_rows(layer, out.hidden_states[1], pos, rows)
    for b in range(2):
        torch.testing.assert_close(mine[b], out.attentions[1][b][:, rows[b]].float(), rtol=1e-5, atol=1e-6)


def test_keep_top_image_keeps_exactly_the_top_by_score_and_every_text_token():
    embeds, mask = prompt(batch=1, images=10)
    seq = initial_sequence(embeds, mask, None)
    scores = torch.zeros(1, embeds.shape[1])
    scores[0, PREFIX:PREFIX + 10] = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.6, 0.4])
    kept = keep_top_image(seq, scores, 5)
    image_positions = kept.position_ids[kept.kind == IMAGE].tolist()
    assert image_positions == [PREFIX + i for i in (0, 2, 4, 6, 8)]            # 0.5 0.9 0.8 0.7 0.6, in order
    assert kept.hidden.shape[1] == PREFIX + 5 + SUFFIX
    torch.testing.assert_close(kept.hidden[0, -SUFFIX:], embeds[0, -SUFFIX:])


def test_fastv_keeps_the_top_half_by_the_last_tokens_attention_in_layer_k_minus_1():
    lm = tiny_llama(layers=4, attn="eager")
    embeds, mask = prompt(images=20)
    with torch.inference_mode():
        out = lm(inputs_embeds=embeds, output_attentions=True)
        attention = out.attentions[1].float().mean(dim=1)[:, -1, PREFIX:PREFIX + 20]   # layer K-1 = 1, last row
        fastv = FastV(k=2, ratio=0.5)
        seq = initial_sequence(embeds, mask, None)
        stage = fastv.stages(20, 4)[0]
        hidden1 = lm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1]
        seq.hidden = hidden1
        scores = stage.score(lm.model.layers[1], seq, lm.model.rotary_emb(embeds, seq.position_ids))
        kept = stage.apply(seq, scores)
        result = fastv.prefill(lm, embeds, mask)
    for b in range(2):
        expected = sorted((attention[b].topk(10).indices + PREFIX).tolist())
        assert kept.position_ids[b][kept.kind[b] == IMAGE].tolist() == expected
    assert result.image_tokens_per_layer == [20, 20, 10, 10]


def test_published_token_schedules():
    lm = tiny_llama(layers=26)
    embeds, mask = prompt(batch=1)
    with torch.inference_mode():
        fastv = FastV().prefill(lm, embeds, mask)
        pdrop = PyramidDrop().prefill(lm, embeds, mask)
        sparse = SparseVLM(192).prefill(lm, embeds, mask)
    assert fastv.image_tokens_per_layer == [576] * 2 + [288] * 24
    assert pdrop.image_tokens_per_layer == [576] * 8 + [288] * 8 + [144] * 8 + [72] * 2
    # SparseVLM-192: keep 300 / 200 / 110 after layers 2 / 6 / 15, plus ⌊(⌊0.3·p⌋ + 1) / 10⌋ + 1 recycled
    recycled = lambda kept, n: int((int((n - kept) * 0.3) + 1) / 10) + 1   # noqa: E731
    after2 = 300 + recycled(300, 576)
    after6 = 200 + recycled(200, after2)
    after15 = 110 + recycled(110, after6)
    assert (after2, after6, after15) == (309, 204, 113)
    assert sparse.image_tokens_per_layer == [576] * 3 + [after2] * 4 + [after6] * 9 + [after15] * 10
    assert sparse.tokens_per_layer[-1] == PREFIX + after15 + SUFFIX


def test_pyramiddrop_renumbers_positions_and_fastv_keeps_them():
    embeds, mask = prompt(batch=1, images=8)
    seq = initial_sequence(embeds, mask, None)
    scores = torch.arange(embeds.shape[1], dtype=torch.float32).unsqueeze(0)
    fast_stage = FastV(k=1, ratio=0.5).stages(8, 4)[0]
    pdrop_stage = PyramidDrop((1,), 0.5).stages(8, 4)[0]
    assert fast_stage.apply(seq, scores).position_ids[0].tolist() == [0, 1, 2, 7, 8, 9, 10] + list(range(11, 17))
    assert pdrop_stage.apply(seq, scores).position_ids[0].tolist() == list(range(PREFIX + 4 + SUFFIX))


def test_dpc_knn_merge_finds_well_separated_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(5, 2) for c in centres]).unsqueeze(0)
    merged, index = dpc_knn_merge(points, 3)
    found = sorted(merged[0].round().tolist())
    assert found == sorted(centres.tolist())
    assert sorted(index[0].div(5, rounding_mode="floor").tolist()) == [0, 1, 2]   # one centre per cluster


def test_sparsevlm_raters_are_the_text_tokens_above_mean_relevance():
    embeds, mask = prompt(batch=1, images=6)
    seq = SparseVLM(192).prepare(initial_sequence(embeds, mask, None))
    image, text = embeds[0, PREFIX:PREFIX + 6], embeds[0, -SUFFIX:]
    relevance = (image @ text.T).softmax(dim=1).mean(dim=0)
    assert seq.extra["rater"][0, -SUFFIX:].tolist() == (relevance > relevance.mean()).tolist()
    assert not seq.extra["rater"][0, :-SUFFIX].any()


def test_lm_reducers_are_registered_with_their_defaults():
    assert get_reducer("fastv").create({"fastv_k": 2, "fastv_ratio": 0.5}).kept(576) == 288
    pdrop = get_reducer("pyramiddrop").create({"pdrop_layers": "8,16,24", "pdrop_ratio": 0.5})
    assert [pdrop.kept(576, s) for s in range(3)] == [288, 144, 72]
    sparse = lambda **v: get_reducer("sparsevlm").create({"sparse_version": "v1", "sparse_tokens": 192,  # noqa: E731
                                                          "sparse_layers": "2,6,15", "recycle": None, **v})
    assert sparse(sparse_tokens=64).schedule == (66, 30, 17) and sparse().recycle
    assert sparse(sparse_tokens=96).schedule == (238, 48, 26)
    v2 = sparse(sparse_version="v2", sparse_tokens=128)
    assert v2.schedule == (238, 108, 60) and not v2.recycle


def test_lm_fidelity_against_an_independent_computation():
    from effprof.modules.reducers.lm_prefill import PrefillResult, lm_fidelity

    a = PrefillResult(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    b = PrefillResult(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.1, 0.9]]))
    fields = lm_fidelity(a, b)
    assert fields["fidelity_cos"] == pytest.approx((1 + 2 ** -0.5) / 2)
    assert fields["fidelity_cos_min"] == pytest.approx(2 ** -0.5)
    assert fields["next_token_agreement"] == 0.5
