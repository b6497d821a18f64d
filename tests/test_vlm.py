"""Whole VLMs: LLaVA-1.5's sizes, stage split, decode memory, greedy tokens against transformers' generate,
checkpoints the tests write themselves."""
import pytest
import torch

from effprof.cli.main import main
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
    # parameters only: without the FLOP count (most of a meta row's seconds at these sizes)
    r = measure(Config("llava", {"preset": preset}, RunOptions(device="meta", count_flops=False)))
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
        kv = pipe.new_cache(16, 2)  # room to spare: the slots past the position are masked
        pipe.prefill(pipe.lm.get_input_embeddings()(ids[:, :-1]), kv)
        step = pipe.decode(ids[:, -1:], kv, torch.full((1, 1), 11))
        exact = pipe.new_cache(12, 2)  # the step fills the last slot: no mask
        pipe.prefill(pipe.lm.get_input_embeddings()(ids[:, :-1]), exact)
        unmasked = pipe.decode(ids[:, -1:], exact, torch.full((1, 1), 11), full=True)
    torch.testing.assert_close(step, reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unmasked, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["transformers", "fused"])
def test_greedy_generation_equals_transformers_generate(impl):
    model, pipe = _tiny_pipeline(seed=3)
    pipe.use_decode_impl(impl)
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
    assert r["stage_names"] == "prefill,decode" and r["generations_timed"] >= 3 and r["prefill_exec"] == "eager"
    assert 0 < r["ttft_ms"] <= r["e2e_ms"] and r["tpot_ms_p50"] <= r["tpot_ms_p90"]
    assert r["gen_tokens_per_s"] == pytest.approx(4 / (r["e2e_ms"] / 1e3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("component", ["llava", "cobra"])
def test_generate_under_graphs_gives_the_eager_tokens(component):
    from effprof.runner import Config, RunOptions, build

    tokens, execs = {}, {}
    for graphs in (False, True):
        opts = RunOptions(device="cuda", dtype="fp32", graphs=graphs)
        built, _, _ = build(Config(component, {"preset": "tiny", "mode": "generate", "new_tokens": 6,
                                               "prompt_tokens": 5}, opts))
        torch.manual_seed(0)
        inputs = built.make_inputs(1)
        with torch.inference_mode():
            runs = [built.call(inputs) for _ in range(3)]  # the first captures, the others replay
        assert all(torch.equal(r, runs[0]) for r in runs)
        tokens[graphs], execs[graphs] = runs[-1].tolist(), built.info["prefill_exec"]
    assert tokens[True] == tokens[False]
    assert execs == {False: "eager", True: "graphs"}


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


def dinov2_reg_params(c, layers, n_patches, patch, registers=4):
    layer = 2 * c + 4 * (c * c + c) + c + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c) + c
    return c + c + registers * c + (n_patches + 1) * c + 3 * patch * patch * c + c + layers * layer + 2 * c


def siglip_params(c, layers, mlp, n_patches, patch):
    layer = 2 * 2 * c + 4 * (c * c + c) + (c * mlp + mlp) + (mlp * c + c)
    return 3 * patch * patch * c + c + n_patches * c + layers * layer + 2 * c


def test_cobra_3b_counts_on_the_meta_device():
    from effprof.models.cobra import PRESETS as COBRA

    p = COBRA["cobra-3b"]
    r = measure(Config("cobra", {}, RunOptions(device="meta", count_flops=False)))  # parameters and tokens only
    n = (p.image_size // p.patch_size) ** 2
    assert n == 729 and r["image_tokens"] == 729 and r["sequence_tokens"] == 729 + 64
    towers = dinov2_reg_params(1024, 24, n, 14) + siglip_params(1152, 27, 4304, n, 14)
    v, d = 1024 + 1152, 2560
    projector = v * 4 * v + 4 * v + 4 * v * d + d + d * d + d
    assert r["stage_vision_params"] == towers
    assert r["stage_project_params"] == projector
    assert r["stage_prefill_params"] == 2_768_345_600  # Mamba-2.8B as released (tied embeddings)
    assert r["params_total"] == towers + projector + 2_768_345_600


def _tiny_cobra(device, towers):
    from effprof.models.cobra import PRESETS as COBRA, build_cobra

    torch.manual_seed(0)
    return build_cobra(COBRA["tiny"], "fused-gelu-mlp", "ref", "ref", "ref", torch.device(device), torch.float32,
                       towers)


def test_cobra_tower_modes_give_the_same_features_and_bad_modes_are_refused():
    seq, conc = _tiny_cobra("cpu", "sequential"), _tiny_cobra("cpu", "concurrent")
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        features = seq.vision(pixels)
        assert features.shape == (2, 4, 32 + 48)
        assert torch.equal(conc.vision(pixels), features)                # on CPU: in turn
        expected = torch.cat([seq.dino(pixels, output_hidden_states=True).hidden_states[-2][:, 5:],
                              seq.siglip(pixels, output_hidden_states=True).hidden_states[-2]], -1)
        assert torch.equal(features, expected)
    with pytest.raises(ValueError, match="towers must be one of"):
        _tiny_cobra("cpu", "parallel")
    r = measure(Config("cobra", {"preset": "tiny", "towers": "concurrent"}, RunOptions(**CPU)))
    assert r["towers"] == "sequential" and r["status"] == "ok"                    # what ran, not what was asked


def test_cobra_siglip_layers_run_on_row_major_memory_with_the_same_features():
    """transformers' SigLIP embeddings are a transposed view; Cobra makes them contiguous once, so that no layer's
    residual add or layer norm sees strided memory, and the features are bitwise those of the strided stream."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class StridedOperands(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.add.Tensor, torch.ops.aten.native_layer_norm.default):
                self.seen += [a.is_contiguous() for a in args if isinstance(a, torch.Tensor) and a.dim() == 3]
            return func(*args, **(kwargs or {}))

    model = _tiny_cobra("cpu", "sequential")
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad(), StridedOperands() as mode:
        features = model.siglip(pixels, output_hidden_states=True).hidden_states[-2]
    # the embeddings' own position add reads the transposed conv output; every layer's adds and norms after it, rows
    assert mode.seen[:2] == [False, True] and len(mode.seen) > 4 and all(mode.seen[2:])
    model.siglip_embeddings()._forward_hooks.clear()              # transformers' module as is: the strided stream
    with torch.no_grad(), StridedOperands() as mode:
        assert torch.equal(model.siglip(pixels, output_hidden_states=True).hidden_states[-2], features)
    assert mode.seen.count(False) > 2              # without it: the layers' operands were strided


@pytest.mark.skipif(not torch.cuda.is_available(), reason="two CUDA streams need a CUDA device")
def test_cobra_concurrent_towers_equal_sequential_ones_eager_and_in_a_cuda_graph():
    seq, conc = _tiny_cobra("cuda", "sequential"), _tiny_cobra("cuda", "concurrent")
    pixels = torch.randn(2, 3, 28, 28, device="cuda")
    with torch.no_grad():
        expected = seq.vision(pixels)
        assert torch.equal(conc.vision(pixels), expected)
        static = pixels.clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):                                       # the fork and join are captured
            out = conc.vision(static)
        for seed in (1, 2):
            torch.manual_seed(seed)
            static.copy_(torch.randn_like(static))
            graph.replay()
            assert torch.equal(out, seq.vision(static))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="two CUDA streams need a CUDA device")
def test_cobra_concurrent_towers_stay_on_two_streams_under_compile():
    """Under torch.compile the towers are compiled one by one and still run on two streams (the fork and join
    outside the compiled code), with the features of the sequential towers."""
    seq, conc = _tiny_cobra("cuda", "sequential"), _tiny_cobra("cuda", "concurrent")
    pixels = torch.randn(2, 3, 28, 28, device="cuda")
    with torch.no_grad():
        expected = seq.vision(pixels)
        got = torch.compile(conc.vision)(pixels)
    assert conc._compiled_towers is not None and list(conc._side_streams) == [pixels.device]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_llava_decode_moves_its_kv_cache_once_per_token():
    """A decode step's counted bytes grow with the context by the KV cache it reads, once: the new token's slot
    is written (index_copy_), not the cache read and written back, and the embedding lookup reads one row."""
    small, large = (measure(Config("llava", {"preset": "tiny", "mode": "decode", "context": c}, RunOptions(**CPU)))
                    for c in (256, 1024))
    grown = large["moved_mib_lower_bound"] - small["moved_mib_lower_bound"]
    cache = large["kv_cache_mib"] - small["kv_cache_mib"]
    assert cache > 0 and cache <= grown < 1.1 * cache
    model = build_llava(PRESETS["tiny"], torch.device("meta"), torch.float32)
    lm_mib = sum(p.numel() for p in [*model.model.language_model.parameters(), *model.lm_head.parameters()]) * 4 / 2**20
    table_mib = model.get_input_embeddings().weight.numel() * 4 / 2**20
    # the LM's weights but its embedding table (the head reads its own), the cache, the logits and activations
    # (under 0.25 MiB here; the table alone is 7.8 MiB)
    assert lm_mib - table_mib < large["moved_mib_lower_bound"] < lm_mib - table_mib + large["kv_cache_mib"] + 0.25


@pytest.mark.parametrize("component", ["llava", "cobra"])
def test_a_generation_is_counted_once_stage_by_stage_as_its_whole_call(component, monkeypatch):
    """A generate row counts its prefill and decode stages along the chain, once for the row and its split, and
    that is what counting the whole generation gives."""
    import effprof.trackers.counts as counts_tracker
    import effprof.trackers.stages as stages_tracker
    from effprof.measure.bytes import count_flops_and_bytes
    from effprof.runner import build

    config = Config(component, {"preset": "tiny", "mode": "generate", "new_tokens": 6}, RunOptions(**CPU))
    built, _, _ = build(config)
    inputs = built.make_inputs(1)
    with torch.inference_mode(), built.counted():
        whole = count_flops_and_bytes(lambda: built.call(inputs))
    counted = []

    def counting(fn, *args, **kwargs):
        counted.append(fn)
        return count_flops_and_bytes(fn, *args, **kwargs)
    monkeypatch.setattr(counts_tracker, "count_flops_and_bytes", counting)
    monkeypatch.setattr(stages_tracker, "count_flops_and_bytes", counting)
    r = measure(config)
    assert len(counted) == 2
    assert r["gflops"] == whole.flops / 1e9 == pytest.approx(r["stage_prefill_gflops"] + r["stage_decode_gflops"])
    assert r["moved_mib_lower_bound"] == whole.bytes / 2**20


def test_cobra_decode_state_is_constant_in_the_context():
    small = measure(Config("cobra", {"preset": "tiny", "mode": "decode", "context": 8}, RunOptions(**CPU)))
    large = measure(Config("cobra", {"preset": "tiny", "mode": "decode", "context": 64}, RunOptions(**CPU)))
    assert small["state_mib"] == large["state_mib"] > 0
    d_inner, layers = 2 * 64, 2
    conv_state, ssm_state = d_inner * 4, d_inner * 16  # (d_inner, d_conv) and (d_inner, d_state) per sequence
    assert small["state_mib"] * 2**20 == layers * (conv_state + ssm_state) * 4


@pytest.mark.parametrize("mode, extra", [("prefill", {"prompt_tokens": 7}), ("decode", {"context": 23})])
def test_the_cost_model_counts_what_flopcountermode_counts(mode, extra):
    from effprof.components.vlm import llama_shape
    from effprof.measure.estimate import estimate

    batch = 2
    r = measure(Config("llava", {"preset": "tiny", "mode": mode, **extra}, RunOptions(batch=batch, **CPU)))
    shape = llama_shape(build_llava(PRESETS["tiny"], torch.device("meta"), torch.float32).config.text_config)
    tokens = r["sequence_tokens"] if mode == "prefill" else 23
    est = estimate(shape, mode, batch, tokens)
    counted = r["stage_prefill_gflops"] if mode == "prefill" else r["gflops"]
    assert est.flops == pytest.approx(counted * 1e9, rel=1e-9)
    assert r["estimate_gflops"] == pytest.approx(counted, rel=1e-9) and r["estimate_stage"] == mode


def test_the_cost_model_reproduces_the_llava_prumerge_figures():
    """LLaVA-PruMerge's table (Vicuna-7B prefill): 9.3 TFLOP at ~700 tokens, 0.91 at ~70 (FlopCounterMode in
    ANCHORS.md: 9,324 and 909 GFLOP for the LM prefill of 700 and 70 tokens, logits of the last token)."""
    from effprof.measure.estimate import LlamaShape, estimate

    vicuna = LlamaShape(32, 4096, 32, 32, 11008, 32064)
    assert estimate(vicuna, "prefill", 1, 700).flops / 1e9 == pytest.approx(9324, abs=1)
    assert estimate(vicuna, "prefill", 1, 70).flops / 1e9 == pytest.approx(909, abs=1)
    int4 = estimate(vicuna, "decode", 1, 1024, "int4")
    bf16 = estimate(vicuna, "decode", 1, 1024, "bf16")
    assert int4.flops == bf16.flops and int4.bytes < 0.4 * bf16.bytes  # weight-only: bytes shrink, FLOPs stay


def test_estimate_command_prints_both_stages(capsys):
    assert main(["estimate", "llava", "--gpu", "H100", "--context", "2048"]) == 0
    out = capsys.readouterr().out
    assert "prefill" in out and "decode" in out and "int4" in out and "lm_head" in out
    assert main(["estimate", "linear"]) == 2


def test_swapping_the_projector_and_the_tower_changes_what_is_counted():
    p = PRESETS["tiny"]
    mlp = p.vision_width * p.width + p.width + p.width * p.width + p.width
    linear = measure(Config("llava", {"preset": "tiny", "projector": "linear"}, RunOptions(device="meta")))
    assert linear["params_total"] == llava_params(p) - mlp + p.vision_width * p.width + p.width
    assert linear["stage_project_params"] == p.vision_width * p.width + p.width
    ldp = measure(Config("llava", {"preset": "tiny", "projector": "ldp"}, RunOptions(device="meta")))
    assert ldp["image_tokens"] == 4  # 4×4 patches -> 2×2 after LDP's stride-2 block
    mv = measure(Config("llava", {"preset": "tiny", "vision": "mambavision-t"}, RunOptions(device="meta")))
    assert mv["image_tokens"] == 49 and mv["vision"] == "mambavision-t"
    assert mv["stage_vision_params"] > 30e6  # MambaVision-T's tower replaces the tiny CLIP


def test_the_prefill_stages_trace_under_torch_compile():
    """`--compile` compiles each stage; dynamo must trace every stage's code (a lazily imported class in an
    isinstance check once broke it). The eager backend traces without generating code: fast on CPU."""
    from effprof.runner import build

    built, _, _ = build(Config("llava", {"preset": "tiny"}, RunOptions(device="cpu", dtype="fp32")))
    inputs = built.make_inputs(1)
    carry, expected = inputs, inputs
    for stage in built.stages:
        torch._dynamo.reset()
        carry = torch.compile(stage.run, backend="eager", fullgraph=False)(carry)
        expected = stage.run(expected)
    torch.testing.assert_close(carry, expected)


def test_cobra_vs_llava_profile_times_each_first_token_with_and_without_compile():
    """The profile's TTFT rows: graphs alone (transformers' element-wise kernels as they are), then compiled
    as well (fused by Inductor), so the ratio of the architectures is read with each model at its best."""
    from effprof.core.profiles import load_profile

    profile = load_profile("cobra-vs-llava", RunOptions(), {})
    ttft = [c for c in profile.configs if c.params.get("mode") == "prefill"]
    assert [(c.component, c.options.compile) for c in ttft] == [("llava", False), ("cobra", False),
                                                                ("llava", True), ("cobra", True)]
    assert all(c.options.dtype == "bf16" for c in profile.configs)
    assert all(c.options.graphs or any("profile's default on CUDA" in n for n in c.notes) for c in profile.configs)
