"""Whole vision-language models (family "vlm"): `llava` (LLaVA-1.5) and `cobra` (Cobra, a Mamba VLM).

Each factory builds its model and names its prefill stages (`vision`, (`reduce`), `project`, `prefill`); the
modes (`--mode prefill | decode | generate`) are the LM scenario's (effprof/scenarios/lm.py), written once for
every LM-like model. Decode reads the cache's own size: `kv_cache_mib` for LLaVA's static KV cache, `state_mib`
for Cobra's constant SSM state.
"""
from __future__ import annotations


from effprof.components.mamba import CONV, DECODE, SCAN, lm_estimate, mamba_shape
from effprof.components.reducer_fit import count_by_declared_tokens, fit_lm_reducer
from effprof.core.lazy import lazy_attr, lazy_from, lazy_import
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Stage, register_component
from effprof.scenarios.lm import CONTEXT, MODE, NEW_TOKENS as NEW, RUNS, LMParts, lm_scenario, random_tokens as _tokens

# Imported when a factory runs, not when the components are listed (effprof/core/lazy.py).
torch = lazy_import("torch")
nn = lazy_import("torch.nn")
COBRA_PRESETS, build_cobra = lazy_from("effprof.models.cobra", "PRESETS", "build_cobra")
LlamaShape = lazy_attr("effprof.measure.estimate", "LlamaShape")
PRESETS, LlavaPipeline, VisionOutput, build_llava, load_llava, swap_parts = lazy_from(
    "effprof.models.llava", "PRESETS", "LlavaPipeline", "VisionOutput", "build_llava", "load_llava", "swap_parts")
resolve_conv_backend = lazy_attr("effprof.modules.mamba", "resolve_conv_backend")
resolve_backend = lazy_attr("effprof.ops.selective_scan", "resolve_backend")
resolve_decode_backend = lazy_attr("effprof.ops.mamba_decode", "resolve_decode_backend")
# = tuple(effprof.models.llava.PRESETS), tuple(effprof.models.cobra.PRESETS), effprof.models.cobra.TOWER_MODES
# (tests/test_cli_fast.py)
PRESET_NAMES = ("llava-1.5-7b", "llava-1.5-13b", "tiny")
COBRA_PRESET_NAMES = ("cobra-3b", "tiny")
TOWER_MODES = ("concurrent", "sequential")

MIB = 2**20
VISION_TOWERS = {"mambavision-t": "t", "mambavision-s": "s", "mambavision-b": "b"}

IMAGES = Param("images", int, 1, "Images per sample (each adds its visual tokens to the prompt).", low=1, high=64)
PROMPT = Param("prompt_tokens", int, 64, "Text tokens besides the image's.", low=1, high=1_000_000)
PRETRAINED = Param("pretrained", str, None, "Local checkpoint directory (llava-hf layout for llava); none = random "
                   "weights from the preset.", optional=True)


def llama_shape(text) -> LlamaShape:
    """The cost model's view of a transformers LlamaConfig."""
    return LlamaShape(text.num_hidden_layers, text.hidden_size, text.num_attention_heads,
                      text.num_key_value_heads or text.num_attention_heads, text.intermediate_size, text.vocab_size)


def _triton_unavailable(choice: str, mode: str, device) -> None:
    """`--decode-impl triton` where triton cannot run: one line, before the model is built (meta counts)."""
    if choice == "triton" and mode != "prefill" and device.type != "meta":
        from effprof.core.errors import ParamError
        from effprof.ops.selective_scan import _unavailable_reason

        reason = _unavailable_reason("triton", device)
        if reason is not None:
            raise ParamError(f"--decode-impl triton: {reason.replace('the triton scan', 'the triton decode step')}")


def _decode_impl(choice: str, lm, device) -> str:
    """`--decode-impl` resolved: auto = fused on CUDA where the LM allows it (effprof.models.llama_decode), and on
    meta, whose count stands for what a GPU runs."""
    from effprof.core.errors import ParamError
    from effprof.models.llama_decode import fusable

    if choice == "transformers" or (choice == "auto" and device.type not in ("cuda", "meta")):
        return "transformers"
    reason = fusable(lm)
    if reason is not None and choice != "auto":
        raise ParamError(f"--decode-impl {choice}: {reason}")
    return "transformers" if reason is not None else ("fused" if choice == "auto" else choice)


@register_component("llava", unit="tok", family="vlm", params=[
    Param("preset", str, "llava-1.5-7b", "Published LLaVA-1.5 architecture (CLIP ViT-L/14-336, mlp2x_gelu, Vicuna); "
          "`tiny` is a toy of the same shape for tests.", choices=PRESET_NAMES),
    MODE, IMAGES, PROMPT, NEW, CONTEXT, RUNS, PRETRAINED,
    Param("vision", str, "clip", "Vision tower: clip (the preset's CLIP ViT-L/14-336) or mambavision-t|s|b "
          "(MambaVision at 224 px, its last stage's 7×7 tokens).", choices=("clip", *VISION_TOWERS)),
    Param("projector", str, "mlp2x_gelu", "Projector: mlp2x_gelu (LLaVA-1.5's), linear (LLaVA-1's) or ldp (MobileVLM's, "
          "4× fewer tokens).", choices=("mlp2x_gelu", "linear", "ldp")),
    Param("images_dir", str, None, "Folder of jpg/png images as inputs (CLIP's preprocessing, cycled to the "
          "batch); none = random pixels.", optional=True),
    Param("decode_impl", str, "auto", "LM decode step (decode, generate): transformers (LlamaModel.forward), fused "
          "(q/k/v and gate/up as one GEMV each on the same weights, fewer kernels) or triton (fused, on effprof's "
          "Triton kernels: GEMVs carrying the RMSNorm, SiLU*up and residual adds, rotary + cache write, split-KV "
          "attention; not yet measured on a GPU); auto = fused on CUDA (and on meta, which counts what CUDA runs).",
          choices=("auto", "transformers", "fused", "triton")),
], reducers=("vision-output", "vision-inner", "lm"))
def llava(ctx: BuildContext, preset, mode, images, prompt_tokens, new_tokens, context, runs, pretrained, vision, projector,
          images_dir=None, decode_impl="auto", reducer=None):
    """LLaVA-1.5 (transformers' LlavaForConditionalGeneration, SDPA): prefill / decode / generate, split by stage."""
    _triton_unavailable(decode_impl, mode, ctx.device)
    if pretrained is not None:
        from effprof.core.pretrained import find_checkpoint

        model = load_llava(find_checkpoint(pretrained), ctx.device, ctx.dtype)
    else:
        model = build_llava(PRESETS[preset], ctx.device, ctx.dtype, max_positions=max(context + 1, 4096))
    cfg = model.config
    side, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    tokens_per_image = (side // patch) ** 2
    vision_dim, width = cfg.vision_config.hidden_size, cfg.text_config.hidden_size
    if vision != "clip":
        from effprof.models.mambavision import MambaVisionTower, mambavision_tower

        tower = mambavision_tower(VISION_TOWERS[vision], resolve_backend("auto", ctx.device), ctx.device, ctx.dtype)
        side, vision_dim, tokens_per_image = 224, tower.hidden_size, MambaVisionTower.num_tokens(224)
        swap_parts(model, tower=tower)
    if projector != "mlp2x_gelu" or vision != "clip":
        from effprof.modules import projectors as P

        module = {"mlp2x_gelu": P.mlp2x_gelu, "linear": nn.Linear, "ldp": P.LDPProjector}[projector](vision_dim, width)
        swap_parts(model, projector=module.to(ctx.device, ctx.dtype))
        if projector == "ldp":
            tokens_per_image = P.LDPProjector.tokens_out(tokens_per_image)
    pipe = LlavaPipeline(model).eval()
    from effprof.models.llava import VisionOutput as vision_output  # the class itself: torch.compile traces it
    image_tokens = images * tokens_per_image
    if reducer is not None:  # effprof/modules/reducers/llava_hooks.py puts it in its slot
        from effprof.core.errors import ParamError
        from effprof.modules.reducers.llava_hooks import attach

        if reducer.where == "lm" and mode != "prefill":
            raise ParamError(f"--reducer {reducer.reducer_name}: LM reducers run in --mode prefill only (they do not "
                             "write the KV cache that decoding reads)")
        if reducer.where != "lm" and (vision != "clip" or projector == "ldp"):
            raise ParamError(f"--reducer {reducer.reducer_name}: vision-side reducers need the CLIP tower and a "
                             f"per-token projector (not --vision {vision} / --projector {projector})")
        fitted = fit_lm_reducer(reducer, len(pipe.lm.layers), image_tokens) if reducer.where == "lm" else None
        attach(pipe, reducer, image_tokens)
        meta_count = (count_by_declared_tokens(pipe, reducer, tokens_per_image, images) if ctx.device.type == "meta"
                      else None)
    prompt_len = image_tokens + prompt_tokens
    vocab = cfg.text_config.vocab_size
    if mode != "prefill":
        pipe.use_decode_impl(_decode_impl(decode_impl, pipe.lm, ctx.device))
    info = {"weights": "pretrained" if pretrained else "random", "image_tokens": image_tokens, "vision": vision,
            "projector": projector,
            "prompt_tokens": prompt_tokens, "sequence_tokens": prompt_len, "attention": "sdpa",
            "lm_width": cfg.text_config.hidden_size, "lm_layers": cfg.text_config.num_hidden_layers,
            "kv_cache": "static (transformers StaticCache)"}
    if reducer is not None and fitted:
        info["reducer_fitted"] = fitted
    if reducer is not None and meta_count:
        info["reducer_meta_count"], info["image_tokens_out"] = meta_count

    def pixels(batch):
        if images_dir is not None:
            from effprof.modules.reducers.images import load_images

            return load_images(images_dir, side, batch * images).to(device=ctx.device, dtype=ctx.dtype)
        return torch.randn(batch * images, 3, side, side, device=ctx.device, dtype=ctx.dtype)

    def vision(inputs):  # images of one sample are consecutive; their tokens are concatenated
        pixel_values, prompt_ids, kv = inputs
        return pipe.vision(pixel_values), prompt_ids, kv

    def reduce(carry):
        return (pipe.reduce(carry[0]), *carry[1:])

    def project(carry):
        features, prompt_ids, kv = carry
        if isinstance(features, vision_output):  # no reducer: the selected features go straight on
            features = features.features
        embeds = pipe.project(features)
        return embeds.reshape(prompt_ids.shape[0], -1, embeds.shape[-1]), prompt_ids, kv

    def prefill(carry):
        image_embeds, prompt_ids, kv = carry
        return pipe.prefill(pipe.embed(image_embeds, prompt_ids), kv, image_embeds.shape[1])

    prefill_stages = [Stage("vision", vision, pipe.tower)]
    if pipe.vision_reducer is not None:
        prefill_stages.append(Stage("reduce", reduce, pipe.vision_reducer,
                                    host_sync=getattr(pipe.vision_reducer.reducer, "host_sync", False)))
    prefill_stages += [Stage("project", project, pipe.projector), Stage("prefill", prefill, pipe.lm)]

    def fill(kv, batch, length):
        pipe.prefill(pipe.lm.get_input_embeddings()(_tokens(vocab, batch, length, ctx.device)), kv)

    def decode_call(token, kv, position):
        kv.set_length(context)  # every timed step decodes at the same context: one kernel
        return pipe.decode(token, kv, position, full=True)  # context + 1 slots: all valid, no mask

    def fidelity(inputs):
        from effprof.modules.reducers.llava_hooks import llava_fidelity

        return llava_fidelity(pipe, inputs, reducer, info["weights"], images_dir, full_vision=LlavaPipeline.vision)

    if mode != "prefill":
        info["decode_impl"] = pipe.decode_impl
    shape = llama_shape(cfg.text_config)
    parts = LMParts(pipe, prefill_stages, lambda b: (pixels(b), _tokens(vocab, b, prompt_tokens, ctx.device)),
                    prompt_len, lambda batch, capacity: pipe.new_cache(capacity, batch),
                    lambda token, position, kv: pipe.decode(token, kv, position), fill, vocab, info,
                    set_length=lambda kv, n: kv.set_length(n), decode_call=decode_call,
                    cache_facts=lambda kv, tokens: {"kv_cache_mib": kv.bytes_for(tokens) / MIB},
                    prefill_extras=fidelity if reducer is not None else None,
                    estimate={"prefill": {**lm_estimate(shape, "prefill", prompt_len, True, "stage_prefill_ms",
                                                        context=context), "static_cache": True},
                              "decode": lm_estimate(shape, "decode", context, True, prefill_tokens=prompt_len)})
    return lm_scenario(parts, mode, ctx, new_tokens, context, runs)


@register_component("cobra", unit="tok", family="vlm", params=[
    Param("preset", str, "cobra-3b", "Cobra-3B (DINOv2-L/14 reg4 + SigLIP so400m/14 at 384 px, Mamba-2.8B); `tiny` is a "
          "toy of the same shape for tests.", choices=COBRA_PRESET_NAMES),
    MODE, IMAGES, PROMPT, NEW, CONTEXT, RUNS,
    Param("projector", str, "fused-gelu-mlp", "fused-gelu-mlp (Cobra's, 2176 -> 8704 -> 2560 -> 2560) or ldp "
          "(MobileVLM's lightweight downsample projector: 729 -> 196 tokens).", choices=("fused-gelu-mlp", "ldp")),
    Param("towers", str, "concurrent", "How the two vision towers run on a GPU: concurrent (DINOv2 and SigLIP on "
          "two CUDA streams, joined before the concat) or sequential (one after the other, as prismatic's "
          "featurizer does). The features are the same.", choices=TOWER_MODES),
    SCAN, CONV, DECODE,
])
def cobra(ctx: BuildContext, preset, mode, images, prompt_tokens, new_tokens, context, runs, projector, towers,
          scan_backend, conv_backend, decode_backend):
    """Cobra (Mamba-2.8B VLM): prefill / decode / generate with a constant-size state, split by stage."""
    scan, conv = resolve_backend(scan_backend, ctx.device), resolve_conv_backend(conv_backend, ctx.device)
    decode = resolve_decode_backend(decode_backend, ctx.device)
    arch = COBRA_PRESETS[preset]
    model = build_cobra(arch, projector, scan, conv, decode, ctx.device, ctx.dtype, towers)
    grid = arch.image_size // arch.patch_size
    per_image = grid * grid if projector != "ldp" else ((grid + 1) // 2) ** 2
    image_tokens = images * per_image
    prompt_len = image_tokens + prompt_tokens
    vocab = arch.lm.padded_vocab_size
    info = {"weights": "random", "image_tokens": image_tokens, "prompt_tokens": prompt_tokens,
            "sequence_tokens": prompt_len, "scan_backend": scan, "conv_backend": conv, "decode_backend": decode,
            "projector": projector, "towers": towers if ctx.device.type == "cuda" else "sequential",
            "lm_width": arch.lm.d_model, "lm_layers": arch.lm.n_layer, "state": "constant (conv + SSM state)"}
    size = arch.image_size

    def pixels(batch):
        return torch.randn(batch * images, 3, size, size, device=ctx.device, dtype=ctx.dtype)

    def vision(inputs):
        pixel_values, prompt_ids, cache = inputs
        return model.vision(pixel_values), prompt_ids, cache

    def project(carry):
        features, prompt_ids, cache = carry
        embeds = model.projector(features)
        return embeds.reshape(prompt_ids.shape[0], -1, embeds.shape[-1]), prompt_ids, cache

    def prefill(carry):
        return model.prefill(*carry)

    prefill_stages = [Stage("vision", vision, nn.ModuleList([model.dino, model.siglip])),
                      Stage("project", project, model.projector), Stage("prefill", prefill, model.lm)]

    def fill(cache, batch, length):
        model.lm.backbone(_tokens(vocab, batch, length, ctx.device), cache)

    parts = LMParts(model, prefill_stages, lambda b: (pixels(b), _tokens(vocab, b, prompt_tokens, ctx.device)),
                    prompt_len, lambda batch, capacity: model.lm.allocate_cache(batch),
                    lambda token, position, cache: model.lm.step(token, cache), fill, vocab, info,
                    cache_facts=lambda cache, tokens: {"state_mib": cache.nbytes / MIB},
                    estimate={"prefill": lm_estimate(mamba_shape(model.lm), "prefill", prompt_len, True,
                                                     "stage_prefill_ms", context=context),
                              "decode": lm_estimate(mamba_shape(model.lm), "decode", context, True,
                                                    prefill_tokens=prompt_len)})
    return lm_scenario(parts, mode, ctx, new_tokens, context, runs)
