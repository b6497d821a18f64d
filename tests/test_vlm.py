"""Whole VLMs: LLaVA-1.5's sizes, stage split, decode memory, greedy tokens against transformers' generate,
checkpoints the tests write themselves."""
import pytest
import torch

from effprof.cli import main
from effprof.models.llava import PRESETS, LlavaPipeline, build_llava
from effprof.report.files import read_json
from effprof.runner import Config, RunOptions, measure

CPU = dict(device="cpu", dtype="fp32", min_time=0.01, warmup=0.0)


def clip_tower_params(p) -> int:
    c, n = p.vision_width, (p.image_size // p.patch_size) ** 2
    layer = 4 * (c * c + c) + 2 * 2 * c + (c * p.vision_mlp + p.vision_mlp) + (p.vision_mlp * c + c)
    return c + 3 * p.patch_size ** 2 * c + (n + 1) * c + 2 * c + p.vision_layers * layer + 2 * c


def llava_params(p) -> int:
    projector = p.vision_width * p.width + p.width + p.width * p.width + p.width
    w = p.width
    llama = p.vocab * w + p.layers * (4 * w * w + 3 * w * p.ffn + 2 * w) + w + p.vocab * w
    return clip_tower_params(p) + projector + llama


@pytest.mark.parametrize("preset", ["llava-1.5-7b", "llava-1.5-13b", "tiny"])
def test_parameter_counts_equal_the_closed_form_on_the_meta_device(preset):
    r = measure(Config("llava", {"preset": preset}, RunOptions(device="meta")))
    assert r["params_total"] == llava_params(PRESETS[preset])
    if preset == "llava-1.5-7b":  # llava-hf/llava-1.5-7b-hf, vocab 32064 (ANCHORS.md: 7,063,427,072)
        assert r["params_total"] == 7_063_427_072
    if preset == "llava-1.5-13b":
        assert 13.3e9 < r["params_total"] < 13.4e9
    assert r["stage_vision_params"] + r["stage_project_params"] + r["stage_prefill_params"] == \
        r["params_total"] - PRESETS[preset].vocab * PRESETS[preset].width  # the LM head sits outside the LM module


def test_prefill_flops_equal_a_hand_count_and_the_stages_add_up():
    p = PRESETS["tiny"]
    prompt, batch = 8, 2
    r = measure(Config("llava", {"preset": "tiny", "prompt_tokens": prompt}, RunOptions(batch=batch, **CPU)))
    n = (p.image_size // p.patch_size) ** 2
    t_v, c = n + 1, p.vision_width
    vision = 2 * batch * (3 * p.patch_size ** 2 * c * n  # patch conv
                          + p.vision_layers * (t_v * (4 * c * c + 2 * c * p.vision_mlp) + 2 * t_v * t_v * c))
    project = 2 * batch * n * (c * p.width + p.width * p.width)
    seq, w = n + prompt, p.width
    lm = 2 * batch * (p.layers * (seq * (4 * w * w + 3 * w * p.ffn) + 2 * seq * seq * w))
    head = 2 * batch * w * p.vocab  # the last position only
    assert r["stage_vision_gflops"] * 1e9 == pytest.approx(vision)
    assert r["stage_project_gflops"] * 1e9 == pytest.approx(project)
    assert r["stage_prefill_gflops"] * 1e9 == pytest.approx(lm + head)
    assert r["gflops"] * 1e9 == pytest.approx(vision + project + lm + head)
    assert r["sequence_tokens"] == seq and r["items_per_call"] == batch * seq
    assert r["stages_sum_ms"] > 0 and r["stage_prefill_share"] + r["stage_vision_share"] + r["stage_project_share"] \
        == pytest.approx(1.0)


def test_decode_reports_the_kv_cache_of_its_context():
    p, context, batch = PRESETS["tiny"], 40, 3
    r = measure(Config("llava", {"preset": "tiny", "mode": "decode", "context": context}, RunOptions(batch=batch, **CPU)))
    head_dim = p.width // p.heads
    assert r["kv_cache_mib"] * 2**20 == 2 * p.layers * batch * p.heads * head_dim * (context + 1) * 4
    assert r["items_per_call"] == batch and r["status"] == "ok"


def _tiny_pipeline(seed=0):
    torch.manual_seed(seed)
    model = build_llava(PRESETS["tiny"], torch.device("cpu"), torch.float32)
    return model, LlavaPipeline(model).eval()


def test_decode_step_matches_a_full_forward():
    model, pipe = _tiny_pipeline()
    ids = torch.randint(0, 32000, (2, 12))
    with torch.no_grad():
        full = model.model.language_model(input_ids=ids).last_hidden_state
        reference = model.lm_head(full[:, -1:])
        kv = pipe.new_cache(16, 2)
        pipe.prefill(pipe.lm.get_input_embeddings()(ids[:, :-1]), kv)
        step = pipe.decode(ids[:, -1:], kv, torch.full((1, 1), 11))
    torch.testing.assert_close(step, reference, rtol=1e-4, atol=1e-4)


def test_greedy_generation_equals_transformers_generate():
    model, pipe = _tiny_pipeline(seed=3)
    p = PRESETS["tiny"]
    n_img = (p.image_size // p.patch_size) ** 2
    pixels = torch.randn(1, 3, p.image_size, p.image_size)
    prompt = torch.randint(0, 32000, (1, 6))
    new = 8
    ids = torch.cat([torch.full((1, n_img), model.config.image_token_id), prompt], dim=1)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=new, do_sample=False,
                                  min_new_tokens=new)[:, ids.shape[1]:]
    from effprof.models.generation import Generator

    kv = pipe.new_cache(n_img + 6 + new, 1)

    def prefill(inputs):
        image = pipe.project(pipe.vision(inputs[0]).features)
        return pipe.prefill(pipe.embed(image, inputs[1]), kv)

    generator = Generator(prefill, lambda tok, pos: pipe.decode(tok, kv, pos), new, "eager", torch.device("cpu"),
                          kv.set_length)
    with torch.no_grad():
        got = generator((pixels, prompt), n_img + 6)
    assert got.tolist() == expected.tolist()


def test_generate_mode_through_the_cli(tmp_path):
    out = tmp_path / "g.json"
    assert main(["run", "llava", "--preset", "tiny", "--mode", "generate", "--new-tokens", "4", "--prompt-tokens", "4",
                 "--device", "cpu", "--min-time", "0.01", "--warmup", "0", "--json", str(out)]) == 0
    r = read_json(out)[0]
    assert r["stage_names"] == "prefill,decode" and r["generations_timed"] >= 3
    assert 0 < r["ttft_ms"] <= r["e2e_ms"] and r["tpot_ms_p50"] <= r["tpot_ms_p90"]
    assert r["gen_tokens_per_s"] == pytest.approx(4 / (r["e2e_ms"] / 1e3))


def test_a_checkpoint_written_by_save_pretrained_loads_with_its_weights(tmp_path):
    model, _ = _tiny_pipeline(seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    r = measure(Config("llava", {"pretrained": str(tmp_path / "ckpt"), "prompt_tokens": 2},
                       RunOptions(count_flops=False, **CPU)))
    assert r["weights"] == "pretrained" and r["params_total"] == llava_params(PRESETS["tiny"])
    from effprof.models.llava import load_llava

    loaded = load_llava(tmp_path / "ckpt", torch.device("cpu"), torch.float32)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
