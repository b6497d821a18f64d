"""LM-side reducers on a tiny transformers Llama: the prefill loop against the model, the scoring rows
against the model's own attention maps, the kept sets against the scores, the published token schedules."""
import pytest
import torch

from effprof.modules.reducers.lm_prefill import (IMAGE, attention_rows, initial_sequence, keep_top_image,
                                                 prefill_with_drops)
from effprof.modules.reducers.lm_reducers import FastV, PyramidDrop, SparseStage, SparseVLM, dpc_knn_merge, rope_gravity
from effprof.core.reducers import get_reducer

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


def _sparse_stage(version, recycle=None):
    """SparseVLM-192's first drop (keep 300, at most n - 1) at layer 1 of a 4-layer LM."""
    return SparseVLM(192, (1,), recycle=recycle, version=version).stages(8, 4)[0]


def _eight_image_scores():
    """Prompt of 3 + 8 + 6 tokens; image scores (positions 3..10) rank 10 > 9 > 3 > 8 > 5 > 7 > 4 > 6."""
    embeds, mask = prompt(batch=1, images=8)
    seq = SparseVLM(192).prepare(initial_sequence(embeds, mask, None))
    scores = torch.zeros(1, embeds.shape[1])
    scores[0, PREFIX:PREFIX + 8] = torch.tensor([0.6, 0.2, 0.4, 0.1, 0.3, 0.5, 0.7, 0.8])
    return seq, scores


def test_sparsevlm_v1_renumbers_positions_after_every_drop():
    seq, scores = _eight_image_scores()
    first = _sparse_stage("v1", recycle=False).apply(seq, scores)            # keep min(300, 8 - 1) = 7
    assert first.position_ids[0].tolist() == list(range(PREFIX + 7 + SUFFIX))
    assert first.kind[0, PREFIX:PREFIX + 7].eq(IMAGE).all() and first.hidden.shape[1] == 16
    # the kept tokens are the top 7 in sequence order (position 6, score 0.1, dropped), numbered 0..15
    expected = torch.cat([seq.hidden[0, :6], seq.hidden[0, 7:]])
    torch.testing.assert_close(first.hidden[0], expected)
    second_stage = SparseStage(2, 3, recycle=False, version="v1")
    second = second_stage.apply(first, scores[:, [i for i in range(17) if i != 6]])
    assert second.position_ids[0].tolist() == list(range(PREFIX + 3 + SUFFIX))


def test_sparsevlm_v1_recycles_into_a_cluster_after_the_kept_tokens_and_renumbers():
    seq, scores = _eight_image_scores()
    stage = SparseStage(1, 4, version="v1")                                   # keep 4, recycle (v1's default)
    assert stage.recycle
    out = stage.apply(seq, scores)
    # kept: scores 0.8 0.7 0.6 0.5 at positions 10 9 3 8 (in order 3 8 9 10); pruned p = 4: the best
    # ⌊0.3·4⌋ + 1 = 2 (positions 5: 0.4, 7: 0.3) form ⌊2/10⌋ + 1 = 1 cluster, their mean, after the kept ones
    assert out.images == 5 and out.hidden.shape[1] == PREFIX + 5 + SUFFIX
    torch.testing.assert_close(out.hidden[0, PREFIX:PREFIX + 4], seq.hidden[0, [3, 8, 9, 10]])
    torch.testing.assert_close(out.hidden[0, PREFIX + 4], (seq.hidden[0, 5] + seq.hidden[0, 7]) / 2)
    assert out.position_ids[0].tolist() == list(range(PREFIX + 5 + SUFFIX))


def test_sparsevlm_v2_keeps_original_positions_and_recycles_nothing():
    seq, scores = _eight_image_scores()
    stage = SparseStage(1, 4, recycle=SparseVLM(192, version="v2").recycle, version="v2")
    out = stage.apply(seq, scores)
    assert out.position_ids[0].tolist() == [0, 1, 2, 3, 8, 9, 10] + list(range(11, 17))
    assert out.images == 4
    twice = SparseStage(2, 2, recycle=False, version="v2").apply(out, scores[:, [0, 1, 2, 3, 8, 9, 10, *range(11, 17)]])
    assert twice.position_ids[0].tolist() == [0, 1, 2, 9, 10] + list(range(11, 17))   # 0.8, 0.7 kept


def test_sparsevlm_v2_published_schedule_through_the_prefill():
    lm = tiny_llama(layers=26)
    embeds, mask = prompt(batch=1)
    with torch.inference_mode():
        v2 = SparseVLM(192, version="v2").prefill(lm, embeds, mask)
    assert v2.image_tokens_per_layer == [576] * 3 + [300] * 4 + [200] * 9 + [118] * 10


def test_rope_gravity_is_the_closed_form():
    """(R_i 1)·(R_j 1)/√d = 2 Σ_f cos((i - j) θ_f) / √d for rotate-half rotary embeddings, θ_f = base^(-2f/d)."""
    lm = tiny_llama()
    positions = torch.tensor([[0, 1, 2, 5, 9, 13]])
    with torch.inference_mode():
        cos_sin = lm.model.rotary_emb(torch.zeros(1, 6, 32), positions)
        gravity = rope_gravity(cos_sin, torch.tensor([[4, 5]]))
    d = 32 // 4
    theta = lm.config.rope_theta if hasattr(lm.config, "rope_theta") else lm.config.rope_parameters["rope_theta"]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    delta = positions[0, [4, 5]].double()[:, None] - positions[0].double()[None, :]
    expected = 2 * torch.cos(delta[..., None] * freqs).sum(dim=-1) / d ** 0.5
    torch.testing.assert_close(gravity[0].double(), expected, rtol=1e-5, atol=1e-5)


def test_sparsevlm_v2_score_against_the_models_attention_maps(monkeypatch):
    """v2's score: attention / RoPE gravity, the 2 heads (patched from 14 for a 4-head LM) of largest
    rater-to-image sum, head mean, rater mean; from the model's own attention maps."""
    import effprof.modules.reducers.lm_reducers as R

    monkeypatch.setattr(R, "PRIORITY_HEADS", 2)
    lm = tiny_llama(attn="eager")
    embeds, mask = prompt(batch=2, images=10)
    with torch.inference_mode():
        out = lm(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
        seq = SparseVLM(192, version="v2").prepare(initial_sequence(embeds, mask, None))
        seq.hidden = out.hidden_states[1]
        cos_sin = lm.model.rotary_emb(embeds, seq.position_ids)
        mine = SparseStage(1, 4, recycle=False, version="v2").score(lm.model.layers[1], seq, cos_sin)
    length = PREFIX + 10 + SUFFIX
    rows = list(range(length - SUFFIX, length))
    for b in range(2):
        raters = [r for r in rows if seq.extra["rater"][b, r]]
        gravity = rope_gravity(cos_sin, torch.tensor([rows]).expand(2, -1))[b]           # (T, L)
        corrected = out.attentions[1][b][:, rows].double() / gravity.double()          # (H, T, L)
        rater_rows = [rows.index(r) for r in raters]
        per_head = corrected[:, rater_rows][:, :, PREFIX:PREFIX + 10].sum(dim=(1, 2))
        heads = per_head.topk(2).indices
        expected = corrected[heads].mean(dim=0)[rater_rows].mean(dim=0)
        torch.testing.assert_close(mine[b].double(), expected, rtol=1e-4, atol=1e-6)


def _sparsevlm_loop(lm, embeds, images, schedule, layers, version):
    """SparseVLM's prefill written as the authors' loop runs it (batch 1): the model's own layers with eager
    attention and their attention maps, Python lists of kept indices; v1 recycles the best ⌊0.3·p⌋ + 1 pruned
    tokens into ⌊m/10⌋ + 1 clusters after the kept image tokens and takes the first L' position ids; v2
    divides by the RoPE gravity, averages the top-14 heads (all 4 here) and keeps the kept tokens' ids."""
    model = lm.model
    x, pos = embeds, torch.arange(embeds.shape[1])[None]
    v_start, v_num = PREFIX, images
    image, text = x[0, v_start:v_start + v_num].float(), x[0, v_start + v_num:].float()
    relevance = (image @ text.T).softmax(dim=1).mean(dim=0)
    raters = [j for j in range(text.shape[0]) if relevance[j] > relevance.mean()]
    for i, layer in enumerate(model.layers):
        length = x.shape[1]
        cos_sin = model.rotary_emb(x, pos)
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
        out = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
        out = out[0] if isinstance(out, tuple) else out
        if i in layers:
            _, weights = layer.self_attn(layer.input_layernorm(x), position_embeddings=cos_sin, attention_mask=mask)
            text_start = v_start + v_num
            rows = [text_start + j for j in raters]
            w = weights[0].float()                                                        # (H, L, L)
            if version == "v2":
                w = w / rope_gravity(cos_sin, torch.arange(length)[None])[0]                 # every query row
                keep_heads = w[:, rows, v_start:text_start].sum(dim=(1, 2)).topk(min(14, w.shape[0])).indices
                w = w[keep_heads]
            relation = w.mean(dim=0)[rows, v_start:text_start].mean(dim=0)                  # (v_num,)
            keep = min(schedule[layers.index(i)], v_num - 1)
            top = sorted(relation.topk(keep).indices.tolist())
            select = list(range(v_start)) + [v_start + j for j in top] + list(range(text_start, length))
            if version == "v1":
                pruned = [j for j in range(v_num) if j not in top]
                best = relation[pruned].topk(int(len(pruned) * 0.3) + 1).indices.tolist()
                tokens = out[:, [v_start + pruned[j] for j in best]]
                clusters = int(tokens.shape[1] / 10) + 1
                merged, _ = dpc_knn_merge(tokens, clusters)
                cut = v_start + keep
                out = torch.cat([out[:, select[:cut]], merged, out[:, select[cut:]]], dim=1)
                pos, v_num = pos[:, :len(select) + clusters], keep + clusters
            else:
                out, pos, v_num = out[:, select], pos[:, select], keep
        x = out
    return model.norm(x)[:, -1]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_sparsevlm_prefill_equals_the_authors_loop(version):
    lm = tiny_llama(layers=4, attn="eager")
    embeds, mask = prompt(batch=1, images=20)
    sparse = SparseVLM(192, (1, 2), version=version)
    sparse.schedule = (12, 6)
    with torch.inference_mode():
        mine = sparse.prefill(lm, embeds, mask)
        expected = _sparsevlm_loop(lm, embeds, 20, (12, 6), [1, 2], version)
    recycled = [20, 20, 12 + 1, 6 + 1] if version == "v1" else [20, 20, 12, 6]
    assert mine.image_tokens_per_layer == recycled
    torch.testing.assert_close(mine.hidden, expected, rtol=1e-5, atol=1e-5)
