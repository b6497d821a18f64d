"""CLIP vision towers and visual token pruning: exact counts, exact FLOPs, pruning against its definition."""
import math
from fractions import Fraction

import pytest
import torch

from effprof.cli.main import main
from effprof.core.errors import ParamError
from effprof.measure.flops import count_flops
from effprof.modules.token_pruning import NormTopKPruner, kept_patch_count, norm_topk_prune_reference
from effprof.core.profiles import load_profile
from effprof.core.registry import BuildContext, create
from effprof.report.files import read_json
from effprof.runner import RunOptions, count_params

CPU = BuildContext(torch.device("cpu"), torch.float32)
META = BuildContext(torch.device("meta"), torch.float32)  # shapes only: counts params without initialising

# The published OpenAI CLIP vision towers (Radford et al. 2021, Table 20 / the released configs), written
# here independently of effprof's presets: (image, patch, width, layers, mlp width).
PUBLISHED = {
    "vit-b-16": (224, 16, 768, 12, 3072),
    "vit-l-14": (224, 14, 1024, 24, 4096),
    "vit-l-14-336": (336, 14, 1024, 24, 4096),
}
B16 = dict(width=768, layers=12, mlp=3072, patch=16)


def clip_vision_params(image: int, patch: int, width: int, layers: int, mlp: int) -> int:
    """Closed-form parameter count of a CLIP vision tower without its output projection."""
    patches = (image // patch) ** 2
    patch_conv = 3 * patch * patch * width                    # Conv2d, no bias
    class_embedding = width
    positions = (patches + 1) * width
    pre_post_layernorm = 2 * (2 * width)                      # weight + bias each
    attention = 4 * (width * width + width)                   # q, k, v, out projections with bias
    layernorms = 2 * (2 * width)
    mlp_params = (width * mlp + mlp) + (mlp * width + width)  # fc1, fc2 with bias
    return patch_conv + class_embedding + positions + pre_post_layernorm + layers * (attention + layernorms + mlp_params)


def clip_vision_flops(batch: int, image: int, encoder_tokens: int, width: int, layers: int, mlp: int, patch: int) -> int:
    """FLOPs (2×MAC) of one call: patch conv on every patch, then per layer and token the q/k/v/out and
    fc1/fc2 matmuls, plus the two attention matmuls QKᵀ and AV (2·T²·D MACs each). LayerNorms,
    activations, softmax and the pruning itself count zero, as in FlopCounterMode."""
    patches = (image // patch) ** 2
    conv_macs = patches * (3 * patch * patch) * width
    linear_macs = layers * encoder_tokens * (4 * width * width + 2 * width * mlp)
    attention_macs = layers * 2 * encoder_tokens ** 2 * width
    return 2 * batch * (conv_macs + linear_macs + attention_macs)


def ceil_fraction(keep: float, n: int) -> int:
    """⌈keep·n⌉ in exact decimal arithmetic (keep as written, e.g. 0.07 is 7/100)."""
    return math.ceil(Fraction(str(keep)) * n)


@pytest.fixture(scope="module")
def tiny_vtp():
    """One ViT-B/16 clip-vtp at 32² (4 patches), built once; tests swap its pruner."""
    return create("clip-vtp", ctx=CPU, img_size=32, keep=0.5)


# ---------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_param_counts_equal_the_closed_form(preset):
    built = create("clip-vision", ctx=META, preset=preset)
    image, patch, width, layers, mlp = PUBLISHED[preset]
    expected = clip_vision_params(image, patch, width, layers, mlp)
    assert count_params(built.module) == (expected, expected)
    cfg = built.module.config
    assert (cfg.hidden_act, cfg.layer_norm_eps, cfg.image_size, cfg.patch_size) == ("quick_gelu", 1e-5, image, patch)
    assert built.info["tokens_in"] == (image // patch) ** 2 + 1


def test_closed_form_gives_the_released_totals():
    # The figures in clip.py's docstring; 85,798,656 (once quoted for ViT-B/16) is one width (768) short.
    assert clip_vision_params(*PUBLISHED["vit-b-16"]) == 85_799_424
    assert clip_vision_params(*PUBLISHED["vit-l-14"]) == 303_179_776
    assert clip_vision_params(*PUBLISHED["vit-l-14-336"]) == 303_507_456


def test_img_size_changes_only_the_position_table():
    built = create("clip-vision", ctx=META, preset="vit-b-16", img_size=448)
    assert count_params(built.module)[0] == clip_vision_params(448, 16, 768, 12, 3072)
    assert built.info["tokens_in"] == 28 * 28 + 1 and built.info["pos_interpolated"] is False


# ---------------------------------------------------------------- FLOPs

def test_clip_vision_flops_equal_the_hand_formula():
    built = create("clip-vision", ctx=CPU, img_size=32)
    inputs = built.make_inputs(2)
    with torch.inference_mode():
        flops, _ = count_flops(lambda: built.call(inputs))
        pooled = built.call(inputs)
    assert pooled.shape == (2, 768)
    assert flops == clip_vision_flops(2, 32, 1 + 4, **B16)


def test_clip_vtp_flops_count_only_the_tokens_entering_the_encoder(tiny_vtp):
    module = tiny_vtp.module
    module.pruner = NormTopKPruner(0.25, summary_token=True)  # 4 patches -> 1 kept + cls + summary = 3
    inputs = tiny_vtp.make_inputs(2)
    with torch.inference_mode():
        flops, _ = count_flops(lambda: module(*inputs))
    assert flops == clip_vision_flops(2, 32, 3, **B16)


# ---------------------------------------------------------------- token counts

@pytest.mark.parametrize("keep", [1.0, 0.9, 0.7, 0.5, 0.25, 0.01])
@pytest.mark.parametrize("summary", [True, False])
def test_tokens_in_and_out_round_up(keep, summary):
    built = create("clip-vtp", ctx=META, keep=keep, summary_token=summary)  # 224² / 16 = 196 patches
    assert built.info["tokens_in"] == 197
    assert built.info["patches_kept"] == ceil_fraction(keep, 196)
    assert built.info["tokens_out"] == 1 + int(summary) + ceil_fraction(keep, 196)


def test_keep_one_with_summary_token_gives_two_plus_n_tokens():
    assert create("clip-vtp", ctx=META, keep=1.0).info["tokens_out"] == 1 + 1 + 196


def test_kept_count_is_not_fooled_by_float_products():
    assert 0.07 * 100 > 7  # 7.000000000000001
    assert kept_patch_count(0.07, 100) == 7
    assert kept_patch_count(0.29, 100) == 29
    assert kept_patch_count(1e-6, 196) == 1


def test_encoder_receives_the_reported_number_of_tokens(tiny_vtp):
    seen = []
    module = tiny_vtp.module
    hook = module.tower.encoder.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape), with_kwargs=True)
    try:
        for keep, summary in ((1.0, True), (0.5, True), (0.5, False), (0.25, False)):
            module.pruner = NormTopKPruner(keep, summary)
            with torch.inference_mode():
                module(*tiny_vtp.make_inputs(2))
            assert seen[-1] == (2, 1 + int(summary) + ceil_fraction(keep, 4), 768)
    finally:
        hook.remove()


# ---------------------------------------------------------------- pruning against its definition

@pytest.mark.parametrize("keep", [1.0, 0.5, 0.33, 0.02])
@pytest.mark.parametrize("summary", [True, False])
def test_pruner_matches_the_reference(keep, summary):
    gen = torch.Generator().manual_seed(int(keep * 100) + summary)
    embeddings = torch.randn(3, 1 + 50, 16, generator=gen)
    fast = NormTopKPruner(keep, summary)(embeddings)
    slow = norm_topk_prune_reference(embeddings, keep, summary)
    assert fast.shape == (3, 1 + int(summary) + ceil_fraction(keep, 50), 16)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast[:, 0], embeddings[:, 0], rtol=0, atol=0)  # class token first, untouched


def test_pruner_keeps_the_largest_norms_and_the_mean_of_all_patches():
    patches = torch.zeros(1, 4, 2)
    patches[0, :, 0] = torch.tensor([1.0, 5.0, 2.0, 4.0])
    embeddings = torch.cat([torch.full((1, 1, 2), 9.0), patches], dim=1)
    out = NormTopKPruner(0.5, summary_token=True)(embeddings)
    assert out[0, :, 0].tolist() == [9.0, 3.0, 5.0, 4.0]  # cls, mean(1,5,2,4), top-2 by norm


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.01])
def test_pruner_refuses_keep_outside_the_unit_interval(keep):
    with pytest.raises(ValueError):
        NormTopKPruner(keep)


# ---------------------------------------------------------------- fidelity

def test_fidelity_is_one_when_nothing_is_pruned_and_below_one_when_pruning(tiny_vtp):
    module, inputs = tiny_vtp.module, tiny_vtp.make_inputs(3)
    module.pruner = NormTopKPruner(1.0, summary_token=False)
    with torch.inference_mode():
        full = tiny_vtp.extras(module, inputs)
        torch.testing.assert_close(module(*inputs), module.unpruned(*inputs), rtol=1e-4, atol=1e-5)
        module.pruner = NormTopKPruner(0.25, summary_token=True)
        pruned = tiny_vtp.extras(module, inputs)
    assert abs(full["fidelity_cos"] - 1.0) < 1e-5
    assert pruned["fidelity_cos"] < 1.0 - 1e-6
    assert pruned["fidelity_cos_min"] <= pruned["fidelity_cos"]
    assert pruned["fidelity_dtype"] == "fp32" and "random weights" in pruned["fidelity_note"]


def test_fidelity_of_a_bf16_module_is_computed_in_fp32_and_leaves_it_bf16():
    built = create("clip-vtp", ctx=BuildContext(torch.device("cpu"), torch.bfloat16), img_size=32, keep=1.0,
                   summary_token=False)
    with torch.inference_mode():
        fields = built.extras(built.module, built.make_inputs(2))
    assert abs(fields["fidelity_cos"] - 1.0) < 1e-5
    assert {p.dtype for p in built.module.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------- refusals through the CLI

@pytest.mark.parametrize("argv, says", [
    (["run", "clip-vtp", "--keep", "1.5"], "--keep"),
    (["run", "clip-vtp", "--keep", "0"], "--keep"),
    (["run", "clip-vision", "--img-size", "100"], "patch size 16"),
    (["run", "clip-vtp", "--preset", "vit-l-14", "--img-size", "224.5"], "--img-size"),
    (["run", "clip-vision", "--preset", "vit-h-14"], "--preset"),
    (["run", "clip-vision", "--pretrained", "/nonexistent/clip-dir"], "no such directory"),
])
def test_bad_input_is_refused_in_one_line(argv, says, capsys, fast):
    assert main([*argv, *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err
    assert "\n" not in err and "Traceback" not in err


# ---------------------------------------------------------------- pretrained round trip

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8)


def save_tiny_vision(path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(7)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
    model.save_pretrained(str(path))
    return model


def test_pretrained_weights_are_loaded_exactly(tmp_path):
    saved = save_tiny_vision(tmp_path / "tiny")
    built = create("clip-vision", ctx=CPU, pretrained=str(tmp_path / "tiny"))
    assert built.info["architecture"].startswith("checkpoint tiny")
    assert built.info["tokens_in"] == 1 + (32 // 8) ** 2
    loaded = built.module.state_dict()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    x = built.make_inputs(2)
    with torch.inference_mode():
        torch.testing.assert_close(built.call(x), saved(pixel_values=x[0]).pooler_output)


def test_pretrained_from_a_full_clip_checkpoint_takes_the_vision_half(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                bos_token_id=0, eos_token_id=1)
    full = CLIPModel(CLIPConfig(vision_config=TINY, text_config=text)).eval()
    full.save_pretrained(str(tmp_path / "full"))
    built = create("clip-vtp", ctx=CPU, pretrained=str(tmp_path / "full"), keep=0.5)
    tower = built.module.tower
    assert torch.equal(tower.embeddings.patch_embedding.weight, full.vision_model.embeddings.patch_embedding.weight)
    assert torch.equal(tower.encoder.layers[1].mlp.fc2.weight, full.vision_model.encoder.layers[1].mlp.fc2.weight)
    assert built.info["tokens_out"] == 1 + 1 + 8  # 16 patches, 8 kept, cls + summary
    with torch.inference_mode():
        fields = built.extras(built.module, built.make_inputs(2))
    assert fields["fidelity_note"].startswith("pretrained weights") and 0 < fields["fidelity_cos"] <= 1 + 1e-6


def test_pretrained_at_another_size_interpolates_positions(tmp_path):
    save_tiny_vision(tmp_path / "tiny")
    built = create("clip-vtp", ctx=CPU, pretrained=str(tmp_path / "tiny"), img_size=48, keep=0.5)
    assert built.info["pos_interpolated"] is True and built.info["tokens_in"] == 1 + 36
    with torch.inference_mode():
        assert built.call(built.make_inputs(2)).shape == (2, 32)
    with pytest.raises(ParamError, match="patch size 8"):
        create("clip-vision", ctx=CPU, pretrained=str(tmp_path / "tiny"), img_size=36)


def test_pretrained_run_through_the_cli(tmp_path, fast):
    save_tiny_vision(tmp_path / "tiny")
    out = tmp_path / "r.json"
    assert main(["run", "clip-vision", "--pretrained", str(tmp_path / "tiny"), "--batch", "2", *fast,
                 "--json", str(out)]) == 0
    record = read_json(out)[0]
    assert record["params_total"] == clip_vision_params(32, 8, 32, 2, 64)
    assert "param_pretrained" not in record  # local paths stay out of the records


def test_empty_pretrained_dir_is_refused(tmp_path, capsys, fast):
    (tmp_path / "empty").mkdir()
    assert main(["run", "clip-vtp", "--pretrained", str(tmp_path / "empty"), *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json" in err and "\n" not in err


# ---------------------------------------------------------------- a whole run and the profile

def test_clip_vtp_run_record(tmp_path, fast):
    out = tmp_path / "vtp.json"
    assert main(["run", "clip-vtp", "--keep", "0.5", "--img-size", "32", "--batch", "2", *fast,
                 "--min-time", "0.05", "--json", str(out)]) == 0
    r = read_json(out)[0]
    assert r["status"] == "ok" and r["unit"] == "img" and r["items_per_call"] == 2
    assert (r["tokens_in"], r["tokens_out"], r["patches_kept"]) == (5, 4, 2)
    assert r["gflops"] * 1e9 == pytest.approx(clip_vision_flops(2, 32, 4, **B16), rel=1e-12)
    assert r["params_total"] == clip_vision_params(32, 16, 768, 12, 3072)
    assert 0 < r["latency_ms_p10"] <= r["latency_ms_median"] <= r["latency_ms_p90"]
    assert 0 < r["fidelity_cos"] <= 1 + 1e-6
    assert r["param_keep"] == 0.5 and r["param_summary_token"] is True


def test_profile_expands_to_the_keep_grid_with_keep_one_as_baseline():
    profile = load_profile("clip-vtp", RunOptions(), {"batch": 2, "device": "cpu"})
    assert [c.label for c in profile.configs] == ["keep=1.0", "keep=0.9", "keep=0.7", "keep=0.5", "keep=0.25"]
    assert profile.baseline == 0
    assert all(c.options.batch == 2 and c.params["preset"] == "vit-b-16" for c in profile.configs)
    assert load_profile("clip-vtp", RunOptions(), {}).configs[0].options.batch == 256
