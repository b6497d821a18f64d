"""Vision-side reducers: hand-built cases with known answers, fast paths against references, the CLI."""
import json

import numpy as np
import pytest
import torch

from effprof.modules.reducers.prumerge import (iqr_outlier_count, merge_batched, merge_loop_reference,
                                               uniform_samples)
from effprof.modules.reducers.tome import bipartite_soft_matching, merge_wavg, tome_token_counts
from effprof.modules.reducers.vision import VisionOutput
from effprof.modules.reducers.visionzip import VisionZip, class_attention_by_head, contextual_merge, dominant_indices
from effprof.core.reducers import list_reducers
from effprof.core.registry import BuildContext, create


def test_iqr_selection_picks_exactly_the_outliers():
    attention = torch.full((1, 20), 0.03)
    attention[0, :16] += torch.linspace(0, 0.01, 16)      # a tight bulk
    outliers = [3, 7, 11, 18]
    attention[0, outliers] = torch.tensor([0.2, 0.25, 0.3, 0.35])
    flat = attention.flatten().numpy()
    q1, q3 = np.percentile(flat, 25), np.percentile(flat, 75)
    assert set(np.where(flat > q3 + 1.5 * (q3 - q1))[0]) == set(outliers)   # the independent definition
    count = iqr_outlier_count(attention)
    assert count == 4
    assert sorted(attention.topk(count, dim=1).indices[0].tolist()) == outliers


def test_iqr_count_matches_numpy_over_the_flattened_batch():
    torch.manual_seed(0)
    attention = torch.rand(3, 50) ** 6
    flat = attention.flatten().numpy()
    q1, q3 = np.percentile(flat, 25), np.percentile(flat, 75)
    expected = int(50 * (flat > q3 + 1.5 * (q3 - q1)).sum() / flat.size)
    assert iqr_outlier_count(attention) == max(1, expected)


def _merge_pair_by_pair(features, keys, attention, kept, neighbours):
    """PruMerge's merge written out pair by pair: the simplest model of the reference's loop."""
    out = []
    for b in range(features.shape[0]):
        x, a = features[b].float(), attention[b].float()
        keep_list = kept[b].tolist()
        pruned = [j for j in range(x.shape[0]) if j not in set(keep_list)]
        normed = torch.nn.functional.normalize(keys[b].float(), dim=-1)
        rows = []
        for i, token in enumerate(keep_list):
            rest = keep_list[:i] + keep_list[i + 1:] + pruned
            sims = torch.stack([normed[token] @ normed[j] for j in rest])
            chosen = [rest[j] for j in sims.topk(min(neighbours, len(rest))).indices.tolist()]
            rows.append(x[token] + sum(a[j] * x[j] for j in chosen))
        rows.append(sum(a[j] * x[j] for j in pruned))
        out.append(torch.stack(rows))
    return torch.stack(out)


def test_prumerge_batched_merge_and_the_reference_loop_equal_a_pair_by_pair_merge():
    torch.manual_seed(1)
    features, keys = torch.randn(2, 20, 8), torch.randn(2, 20, 8)
    attention = torch.rand(2, 20).softmax(dim=-1)
    kept = attention.topk(4, dim=1).indices
    expected = _merge_pair_by_pair(features, keys, attention, kept, neighbours=5)
    fast = merge_batched(features, keys, attention, kept, neighbours=5)
    loop = merge_loop_reference(features, keys, attention, kept, neighbours=5)
    assert fast.shape == loop.shape == (2, 5, 8)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loop, expected, rtol=1e-5, atol=1e-5)
    # the last token is the pruned mass: sum over the pruned of a_j x_j
    pruned = [j for j in range(20) if j not in kept[0].tolist()]
    torch.testing.assert_close(fast[0, -1], sum(attention[0, j] * features[0, j] for j in pruned), rtol=1e-5, atol=1e-5)
    # more neighbours asked for than there are other tokens: every other token is a neighbour
    many = merge_loop_reference(features, keys, attention, kept, neighbours=100)
    torch.testing.assert_close(many, _merge_pair_by_pair(features, keys, attention, kept, neighbours=100),
                               rtol=1e-5, atol=1e-5)


def test_prumerge_plus_samples_are_uniform_and_not_kept():
    kept = torch.tensor([[0, 5, 100]])
    samples = uniform_samples(kept, 576)          # ⌊576/3⌋ = 192 -> step ⌊192/3⌋ = 64
    assert samples.tolist() == [s for s in range(0, 575, 64) if s not in (0, 5, 100)]


def _vision_output(batch=2, tokens=41, width=8, heads=2, seed=0):
    torch.manual_seed(seed)
    hidden = torch.randn(batch, tokens, width)
    q, k = torch.randn(batch, tokens, width), torch.randn(batch, tokens, width)
    return VisionOutput(hidden, heads, (q, k))


def test_visionzip_dominant_set_is_the_top_k_of_class_attention():
    vision = _vision_output()
    q, k = vision.qk
    d = 4
    qh, kh = q.view(2, 41, 2, d).transpose(1, 2), k.view(2, 41, 2, d).transpose(1, 2)
    full = ((qh @ kh.transpose(2, 3)) / d ** 0.5).softmax(dim=-1)            # every row, like output_attentions
    cls = full.sum(dim=1)[:, 0]
    attention, _ = class_attention_by_head(q, k, 2)
    torch.testing.assert_close(attention, cls)
    dominant = dominant_indices(attention, 6)
    for b in range(2):
        expected = {0} | {int(i) + 1 for i in cls[b, 1:].topk(5).indices}
        assert set(dominant[b].tolist()) == expected
    out = VisionZip(6, 3)(vision)
    assert out.shape == (2, 9, 8)
    torch.testing.assert_close(out[:, :6], vision.hidden.gather(1, dominant.unsqueeze(-1).expand(-1, -1, 8)))


def test_visionzip_defaults_give_64_128_192_tokens():
    vision = _vision_output(batch=1, tokens=577, width=8, heads=2)
    for (dominant, contextual), expected in (((54, 10), 64), ((108, 20), 128), ((162, 30), 192)):
        assert VisionZip(dominant, contextual)(vision).shape[1] == expected


def _visionzip_hand_example() -> VisionOutput:
    """Class + 7 patches, one head of width 2. The class query [1, 0] ranks patches by their keys' first
    coordinate: 3 (3.0) and 6 (2.0) are the dominant ones. The rest, in order, are 1 2 4 5 7; with 2
    contextual tokens the step is 5 // 2 = 2, so the targets are 1 and 4. By key direction 2 joins 1
    ([0.5, 1] ~ [0, 1]), 5 and 7 join 4 ([0.5, -1] and [1, -0.1] ~ [0, -1])."""
    keys = torch.tensor([[0.0, 0], [0, 1], [0.5, 1], [3, 0], [0, -1], [0.5, -1], [2, 0], [1, -0.1]])
    queries = torch.zeros(8, 2)
    queries[0] = torch.tensor([1.0, 0])
    hidden = torch.stack([torch.tensor([100.0, 1, 2, 300, 4, 5, 600, 7]), torch.ones(8)], dim=-1)
    return VisionOutput(hidden.unsqueeze(0), 1, (queries.unsqueeze(0), keys.unsqueeze(0)))


def test_visionzip_known_answer_authors_merge_and_the_mean_option():
    vision = _visionzip_hand_example()
    dominant = [[100.0, 1], [300, 1], [600, 1]]
    # authors: target + mean of its members: 1 + 2 = 3, 4 + (5 + 7) / 2 = 10 (second column: 1 + 1)
    assert VisionZip(3, 2)(vision)[0].tolist() == dominant + [[3.0, 2], [10, 2]]
    # mean: (1 + 2) / 2 = 1.5, (4 + 5 + 7) / 3 = 16 / 3
    torch.testing.assert_close(VisionZip(3, 2, merge="mean")(vision)[0],
                               torch.tensor(dominant + [[1.5, 1], [16 / 3, 1]]))


def test_visionzip_contextual_merge_known_answer_with_an_empty_target():
    # R = 6, 3 targets (step 2): 0, 2, 4; members 1, 3 -> target 0, member 5 -> target 2, target 4 gets none
    metric = torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.9, 0.2], [-1, 0], [0.2, 1]]).unsqueeze(0)
    x = torch.tensor([10.0, 1, 20, 3, 30, 5]).view(1, 6, 1)
    assert contextual_merge(x, metric, 3)[0, :, 0].tolist() == [12.0, 25.0, 30.0]        # 10 + 2, 20 + 5, 30
    torch.testing.assert_close(contextual_merge(x, metric, 3, "mean")[0, :, 0], torch.tensor([14 / 3, 12.5, 30]))


def _visionzip_by_masks(hidden: torch.Tensor, cls: torch.Tensor, keys: torch.Tensor, dominant: int,
                        contextual: int) -> torch.Tensor:
    """VisionZip written the plain way, sample by sample with Python sets (the definition): `hidden` (B, T, C),
    `cls` (B, T - 1) the class token's attention over the patches summed over heads, `keys` (B, T, d) the
    feature layer's keys averaged over heads."""
    out = []
    for b in range(hidden.shape[0]):
        keep = {0} | {int(i) + 1 for i in cls[b].topk(dominant - 1).indices}
        rest = [i for i in range(hidden.shape[1]) if i not in keep]
        metric = keys[b, rest].float()
        metric = metric / metric.norm(dim=-1, keepdim=True)
        step = max(1, len(rest) // contextual)
        targets = list(range(0, len(rest), step))[:contextual]
        members = [i for i in range(len(rest)) if i not in targets]
        tokens = [hidden[b, i].float() for i in sorted(keep)]
        joined = {t: [] for t in range(contextual)}
        for m in members:
            joined[int((metric[targets] @ metric[m]).argmax())].append(hidden[b, rest[m]].float())
        for t, target in enumerate(targets):
            group = joined[t]
            tokens.append(hidden[b, rest[target]].float() + (torch.stack(group).mean(dim=0) if group else 0))
        out.append(torch.stack(tokens))
    return torch.stack(out)


def _visionzip_reference(vision: VisionOutput, dominant: int, contextual: int) -> torch.Tensor:
    q, k = vision.qk
    heads, d = vision.num_heads, k.shape[-1] // vision.num_heads
    qh, kh = q.view(*q.shape[:2], heads, d).transpose(1, 2), k.view(*k.shape[:2], heads, d).transpose(1, 2)
    maps = ((qh @ kh.transpose(2, 3)) / d ** 0.5).softmax(dim=-1)                   # every row, as output_attentions
    return _visionzip_by_masks(vision.hidden, maps[:, :, 0, 1:].sum(dim=1), kh.mean(dim=1), dominant, contextual)


def test_visionzip_equals_the_plain_definition_on_random_inputs():
    for seed, (dominant, contextual) in enumerate(((6, 3), (10, 7), (1, 5))):
        vision = _vision_output(seed=seed)
        torch.testing.assert_close(VisionZip(dominant, contextual)(vision),
                                   _visionzip_reference(vision, dominant, contextual), rtol=1e-5, atol=1e-5)


def test_tome_merge_preserves_size_and_merges_the_most_similar_pairs():
    # tokens 0..6; A = even (0 is the class token), B = odd. 2 ~ 5 exactly, 4 ~ 1 nearly, 6 unlike all of B.
    metric = torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                           [0, 1, 0.1, 0], [0, 0, 1, 0], [-1, -1, -1, -1]]).unsqueeze(0)
    x = torch.arange(7.0).view(1, 7, 1) * torch.ones(1, 1, 3)
    merge = bipartite_soft_matching(metric, r=2, class_token=True)
    merged, size = merge_wavg(merge, x, None)
    assert float(size.sum()) == 7.0
    # unmerged A tokens (0, 6) first, then B tokens 1 (+4), 3, 5 (+2)
    assert size[0, :, 0].tolist() == [1, 1, 2, 1, 2]
    assert merged[0, :, 0].tolist() == [0.0, 6.0, 2.5, 3.0, 3.5]
    # sizes keep adding up over a second merge
    merge2 = bipartite_soft_matching(torch.randn(1, 5, 4), r=2, class_token=True)
    _, size2 = merge_wavg(merge2, merged, size)
    assert float(size2.sum()) == 7.0 and size2.shape[1] == 3


def test_tome_token_counts_closed_form():
    # ViT-B/16: 197 tokens, r = 16 in 12 blocks (ToMe's ViT-B setting)
    assert tome_token_counts(197, 16, 12) == [197, 181, 165, 149, 133, 117, 101, 85, 69, 53, 37, 21, 11]


def _tiny_ctx():
    return BuildContext(torch.device("cpu"), torch.float32, 0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP vision checkpoint (width 32, 4 heads, 6 layers, 32 px, patch 8: 16 patches + class)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                              image_size=32, patch_size=8, hidden_act="quick_gelu")
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModel(config).save_pretrained(folder)
    return str(folder)


def test_tome_r0_equals_the_plain_tower_and_counts_follow_the_formula(tiny_clip):
    ctx = _tiny_ctx()
    plain = create("clip-vision", ctx, pretrained=tiny_clip)
    tome0 = create("clip-vision", ctx, pretrained=tiny_clip, reducer="tome", r=0)
    tome3 = create("clip-vision", ctx, pretrained=tiny_clip, reducer="tome", r=3)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(tome0.call((pixels,)), plain.call((pixels,)), rtol=1e-4, atol=1e-4)
        facts = tome3.extras(tome3.module, (pixels,))
    assert facts["tokens_per_layer"] == ">".join(map(str, tome_token_counts(17, 3, 6)))


def test_prumerge_module_keeps_outliers_plus_one(tiny_clip):
    ctx = _tiny_ctx()
    built = create("clip-vision", ctx, pretrained=tiny_clip, reducer="prumerge", neighbours=4)
    loop = create("clip-vision", ctx, pretrained=tiny_clip, reducer="prumerge", neighbours=4, merge="loop")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = built.call((pixels,))
        torch.testing.assert_close(out, loop.call((pixels,)), rtol=1e-4, atol=1e-4)
    assert out.shape[1] == built.module.reducer.last_kept + 1


def test_visionzip_in_a_clip_tower_equals_the_authors_recipe(tiny_clip):
    """The authors' recipe on the tower itself: transformers' attention maps of the penultimate layer
    (output_attentions, eager attention), its hidden state, its keys averaged over heads (a hook on k_proj)."""
    from transformers import CLIPVisionModel

    tower = CLIPVisionModel.from_pretrained(tiny_clip, attn_implementation="eager").eval()
    built = create("clip-vision", _tiny_ctx(), pretrained=tiny_clip, reducer="visionzip", dominant=5, contextual=3)
    pixels = torch.randn(2, 3, 32, 32)
    keys = {}
    layer = getattr(tower, "vision_model", tower).encoder.layers[-2]   # transformers 5 drops vision_model
    handle = layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: keys.__setitem__("k", o))
    with torch.inference_mode():
        out = tower(pixels, output_hidden_states=True, output_attentions=True)
        mine = built.call((pixels,))
    handle.remove()
    heads = layer.self_attn.num_heads
    metric = keys["k"].view(2, 17, heads, -1).mean(dim=2)
    cls = out.attentions[-2][:, :, 0, 1:].sum(dim=1)
    expected = _visionzip_by_masks(out.hidden_states[-2], cls, metric, 5, 3)
    torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-5)


def test_visionzip_in_llava_equals_the_authors_recipe():
    """The same in the LLaVA pipeline, where the reduce stage recomputes the feature layer's q/k from its input."""
    import copy

    built = create("llava", _tiny_ctx(), preset="tiny", prompt_tokens=4, reducer="visionzip", dominant=5, contextual=3)
    torch.manual_seed(0)
    inputs = built.make_inputs(2)
    tower = copy.deepcopy(built.module.tower)
    tower.set_attn_implementation("eager")
    layer = getattr(tower, "vision_model", tower).encoder.layers[-2]
    keys = {}
    handle = layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: keys.__setitem__("k", o))
    with torch.inference_mode():
        features = built.stages[1].run(built.stages[0].run(inputs))[0]      # vision -> reduce
        out = tower(inputs[0], output_hidden_states=True, output_attentions=True)
    handle.remove()
    tokens, heads = out.hidden_states[-2].shape[1], layer.self_attn.num_heads
    metric = keys["k"].view(2, tokens, heads, -1).mean(dim=2)
    expected = _visionzip_by_masks(out.hidden_states[-2], out.attentions[-2][:, :, 0, 1:].sum(dim=1), metric, 5, 3)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_every_vision_reducer_is_registered_with_a_site():
    names = {r.name: r.where for r in list_reducers()}
    assert names == {"identity": "vision-output", "vtp": "vision-inner", "tome": "vision-inner",
                     "prumerge": "vision-output", "prumerge+": "vision-output", "visionzip": "vision-output",
                     "fastv": "lm", "sparsevlm": "lm", "pyramiddrop": "lm"}


VISION_ROWS = [({"reducer": "tome", "r": 2}, 5), ({"reducer": "vtp", "keep": 0.5}, 10),
               ({"reducer": "visionzip", "dominant": 5, "contextual": 3}, 8), ({"reducer": "identity"}, 16),
               ({"reducer": "prumerge"}, None), ({"reducer": "prumerge+"}, None)]


def _compare(tmp_path, rows: list[dict]) -> list[dict]:
    """`effprof compare` of a profile of `rows` on the CPU, tiny timing; the records it wrote."""
    import yaml

    from effprof.cli.main import main

    profile, out = tmp_path / "p.yaml", tmp_path / "r.json"
    profile.write_text(yaml.safe_dump({"title": "t", "rows": rows, "options": {
        "device": "cpu", "dtype": "fp32", "batch": 2, "min_time": 0.01, "warmup": 0.0}}))
    assert main(["compare", str(profile), "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    return records if isinstance(records, list) else records["records"]


def test_every_vision_reducer_through_the_cli(tmp_path, tiny_clip):
    rows = [{"component": "clip-vision", "params": {"pretrained": tiny_clip, **params}, "label": params["reducer"]}
            for params, _ in VISION_ROWS]
    for record, (params, tokens_out) in zip(_compare(tmp_path, rows), VISION_ROWS):
        assert record["status"] == "ok" and record["param_reducer"] == params["reducer"] and record["tokens_in"] == 17
        if tokens_out is not None:
            assert record["tokens_out"] == tokens_out
        else:
            assert record["tokens_out"] == record["reducer_kept"] + 1
        assert 0 < record["fidelity_cos"] <= 1.0 + 1e-6 and "random pixels" in record["fidelity_note"]
        assert ("stage_reduce_ms" in record) and ("stage_vision_ms" in record)


@pytest.mark.parametrize("args, words", [
    (["--r", "4"], "is a reducer option"),
    (["--reducer", "fastv"], "acts at lm"),
    (["--reducer", "nope"], "unknown reducer"),
    (["--reducer", "tome", "--keep", "0.5"], "unknown parameter 'keep'"),
    (["--reducer", "tome", "--r", "-1"], "outside the allowed range"),
])
def test_bad_reducer_input_is_one_line_and_exit_2(fast, tiny_clip, args, words, capsys):
    from effprof.cli.main import main

    assert main(["run", "clip-vision", "--pretrained", tiny_clip, *fast, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


def test_images_dir_is_prepared_as_clips_processor(tmp_path):
    from PIL import Image

    from effprof.modules.reducers.images import CLIP_MEAN, CLIP_STD, load_images

    Image.new("RGB", (48, 32), (255, 0, 51)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), (0, 128, 0)).save(tmp_path / "b.jpg", quality=100)
    images = load_images(str(tmp_path), 16, 3)
    assert images.shape == (3, 3, 16, 16)
    expected = [(c / 255 - m) / s for c, m, s in zip((255, 0, 51), CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(images[0].mean(dim=(1, 2)), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(images[2], images[0])   # cycled


LLAVA_ROWS = [{"reducer": "prumerge"}, {"reducer": "prumerge+"}, {"reducer": "visionzip", "dominant": 5, "contextual": 3},
              {"reducer": "tome", "r": 2}, {"reducer": "vtp"}, {"reducer": "fastv", "fastv_k": 1},
              {"reducer": "pyramiddrop", "pdrop_layers": "1"}, {"reducer": "sparsevlm", "sparse_layers": "0"}]


def test_every_reducer_through_the_cli_on_a_tiny_llava(tmp_path):
    rows = [{"component": "llava", "params": {"preset": "tiny", "prompt_tokens": 8, **params}, "label": params["reducer"]}
            for params in LLAVA_ROWS]
    for record, params in zip(_compare(tmp_path, rows), LLAVA_ROWS):
        name = params["reducer"]
        assert record["status"] == "ok" and record["image_tokens_in"] == 16, record
        assert 0 < record["fidelity_cos"] <= 1 + 1e-6 and record["next_token_agreement"] in (0.0, 0.5, 1.0)
        layers = record["lm_image_tokens_per_layer"]
        if name in ("fastv", "pyramiddrop"):
            assert layers == "16x1>8x1"
        elif name == "sparsevlm":  # keeps min(300, 16 - 1) = 15, recycles ⌊0.3·1⌋ + 1 = 1 into 1 cluster
            assert layers == "16x2"
        else:
            assert layers == f"{record['image_tokens_out']}x2" and record["image_tokens_out"] < 16
            assert ("stage_reduce_ms" in record) == (name in ("prumerge", "prumerge+", "visionzip"))


def test_lm_reducer_outside_prefill_is_refused(fast, capsys):
    from effprof.cli.main import main

    assert main(["run", "llava", "--preset", "tiny", "--mode", "decode", "--context", "8", *fast,
                 "--reducer", "fastv", "--fastv-k", "1"]) == 2
    captured = capsys.readouterr()
    assert "prefill only" in captured.out + captured.err
