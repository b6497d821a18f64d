"""clip-dual and LoRA: published counts, CLIP's own loss, adapter counts, built-in against peft, merging."""
import copy

import pytest
import torch

from effprof.models.clip_dual import DualEncoder, clip_config, contrastive_loss
from effprof.core.errors import ParamError, UsageError
from effprof.measure.training import TrainingStep, memory_split, param_counts
from effprof.modules import lora as L
from effprof.core.registry import create


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=16),
                     vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=16, patch_size=8),
                     projection_dim=24)
    return CLIPModel(cfg).eval()


def tiny_inputs(batch=3):
    torch.manual_seed(1)
    return torch.randn(batch, 3, 16, 16), torch.randint(0, 64, (batch, 7))


@pytest.mark.parametrize("preset,published", [("vit-b-16", 149_620_737), ("vit-l-14", 427_616_513)])
def test_presets_have_the_published_parameter_counts(preset, published):
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(clip_config(preset, 224, None))
    assert sum(p.numel() for p in model.parameters()) == published


def test_contrastive_loss_equals_clips_own():
    model = tiny_clip()
    pixels, ids = tiny_inputs()
    with torch.no_grad():
        own = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        ours = contrastive_loss(DualEncoder(model)(pixels, ids))
    torch.testing.assert_close(ours, own)


@pytest.mark.parametrize("backend", ["builtin", "peft"])
def test_lora_trainable_count_is_r_times_in_plus_out_per_layer(backend):
    if backend == "peft" and not L.peft_available():
        pytest.skip("peft not installed")
    model, rank = tiny_clip(), 4
    apply = L.apply_lora if backend == "builtin" else L.apply_lora_peft
    names = apply(model, ("q_proj", "v_proj", "visual_projection", "text_projection"), rank, 8.0)
    assert len(names) == 2 * 2 * 2 + 2  # q and v in 2 layers of 2 towers, and the two projections
    # q/v are d×d: 2·d·r each; projections are (in, out): r·(in + out); biases stay frozen
    expected = 2 * 2 * (2 * 48 * rank) + 2 * 2 * (2 * 32 * rank) + rank * (48 + 24) + rank * (32 + 24)
    trainable, frozen = param_counts(model)
    assert trainable == expected
    assert frozen == sum(p.numel() for p in tiny_clip().parameters())


def test_builtin_lora_agrees_with_peft():
    if not L.peft_available():
        pytest.skip("peft not installed")
    targets = ("q_proj", "v_proj", "text_projection")
    builtin, via_peft = tiny_clip(), tiny_clip()
    L.apply_lora(builtin, targets, 4, 8.0)
    L.apply_lora_peft(via_peft, targets, 4, 8.0)
    for layer in L.lora_layers(builtin):  # random B, so the adapters change the output
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
    L.copy_adapters(builtin, via_peft)
    assert param_counts(builtin) == param_counts(via_peft)
    pixels, ids = tiny_inputs()
    with torch.no_grad():
        a, b = DualEncoder(builtin)(pixels, ids), DualEncoder(via_peft)(pixels, ids)
        base = DualEncoder(tiny_clip())(pixels, ids)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, base)


@pytest.mark.parametrize("backend", ["builtin", "peft"])
def test_merged_and_unmerged_adapters_give_the_same_outputs(backend):
    if backend == "peft" and not L.peft_available():
        pytest.skip("peft not installed")
    model = tiny_clip()
    (L.apply_lora if backend == "builtin" else L.apply_lora_peft)(model, ("q_proj", "visual_projection"), 4, 8.0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    pixels, ids = tiny_inputs()
    with torch.no_grad():
        unmerged = DualEncoder(model)(pixels, ids)
        assert L.merge_lora(model) == 5  # q_proj in 2 layers of 2 towers, visual_projection
        merged = DualEncoder(model)(pixels, ids)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_clip_dual_adapt_modes_train_what_they_say():
    small = dict(layers=1, img_size=32, seq_len=8)
    projections = create("clip-dual", adapt="projections", **small)
    assert param_counts(projections.module)[0] == 768 * 512 + 512 * 512  # the two projections, no bias
    lora = create("clip-dual", adapt="lora", rank=4, lora_backend="builtin", **small)
    assert param_counts(lora.module)[0] == 4 * (768 + 512) + 4 * (512 + 512)
    assert lora.info["lora_layers"] == 2 and lora.info["lora_backend"] == "builtin"
    step = TrainingStep(lora)
    frozen = {n: p.detach().clone() for n, p in lora.module.named_parameters() if not p.requires_grad}
    split = memory_split(step, lora.make_inputs(2))
    assert split.gradients == 4 * (4 * (768 + 512) + 4 * (512 + 512))
    assert all(torch.equal(p, frozen[n]) for n, p in lora.module.named_parameters() if n in frozen)
    with pytest.raises(ParamError, match="--merged"):
        create("clip-dual", merged=True, **small)
    with pytest.raises(UsageError, match="lora-targets"):
        L.apply_lora(copy.deepcopy(lora.module), ("nonexistent",), 2, 1.0)


def test_grad_checkpointing_trades_saved_activations_for_recompute():
    from effprof.measure.training import TrainOptions, train_flops

    results = []
    for checkpointing in (False, True):
        built = create("clip-dual", layers=1, img_size=32, seq_len=8)  # full fine-tuning
        step = TrainingStep(built, TrainOptions(grad_checkpointing=checkpointing))
        inputs = built.make_inputs(2)
        _, total = train_flops(step, inputs)
        results.append((memory_split(step, inputs).saved_activations, total))
    (saved_plain, flops_plain), (saved_ckpt, flops_ckpt) = results
    assert saved_ckpt < saved_plain / 2  # only each checkpointed layer's input is kept
    assert flops_ckpt > flops_plain      # the forward of every checkpointed layer runs again in backward
