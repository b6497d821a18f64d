"""The LM scenario: prefill, decode and generate written once, for every LM-like model effprof builds.

In the spirit of optimum-benchmark's inference scenario (load, prefill, decode, per-token latency for every
backend alike): a model describes itself as `LMParts` (its prefill as named stages, its cache, its one-token
step) and `lm_scenario(parts, mode, ...)` turns it into the `Built` the runner measures. Transformer LMs,
Mamba LMs, LLaVA and Cobra all go through here; their component functions only build the model and name
its stages. Each mode is measured directly:

- `prefill`: the prompt (image(s) + text for a VLM) -> the first token's logits, writing the cache: the time
  to first token (TTFT), split by the model's stages;
- `decode`: one new token per sequence with `context` tokens already in the cache (filled outside the timed
  region): the time per output token, and the cache's size at that context;
- `generate`: the prefill, then greedy decode steps to `new_tokens` tokens (effprof.models.generation.Generator,
  in the run's execution mode); the generation tracker stamps every token on the device timeline and reports
  TTFT, TPOT, ITL and end-to-end latency with their percentiles over several generations. Under `--graphs`
  each prefill stage replays its own CUDA graph (a `host_sync` stage runs eagerly) and each decode step is a
  graph replay; `prefill_exec` in the record says which.

Items: prefill counts prompt tokens per second; decode and generate count new tokens.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from effprof.core.errors import ParamError
from effprof.core.lazy import lazy_attr, lazy_import
from effprof.core.limits import MAX_NEW_TOKENS
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, Stage

# Imported when a model is built, not when the components are listed (effprof/core/lazy.py).
torch = lazy_import("torch")
graphed_stages = lazy_attr("effprof.measure.modes", "graphed_stages")
Generator = lazy_attr("effprof.models.generation", "Generator")

MODES = ("prefill", "decode", "generate")
MODE = Param("mode", str, "prefill", "prefill = image + prompt -> first token (TTFT, split by stage); decode = one "
             "token at --context; generate = prefill + --new-tokens greedy tokens.", choices=MODES)
NEW_TOKENS = Param("new_tokens", int, 32, "Tokens to generate (generate mode), the first from the prefill.", low=1,
                   high=MAX_NEW_TOKENS)
CONTEXT = Param("context", int, 1024, "Tokens already in the cache when the timed token is decoded (decode).",
                low=1, high=1_000_000)
RUNS = Param("runs", int, None, "Generations timed in generate mode, for TTFT/TPOT/ITL percentiles (none = at "
             "least 10, more while 2 × --min-time lasts, at most 200).", low=1, high=10_000, optional=True)
LM_PARAMS = (MODE, NEW_TOKENS, CONTEXT, RUNS)  # what every LM-like component declares (one scenario, one set)


def _no_facts(cache: Any, tokens: int) -> dict[str, Any]:
    return {}


@dataclass
class LMParts:
    """An LM-like model as the LM scenario needs it.

    - `prefill_stages`: the prefill as named stages; the first receives `(*prompt_inputs(batch), cache)`,
      the last returns logits (batch, L', vocab) whose last position gives the first token.
    - `prompt_inputs(batch)`: the prefill's inputs without the cache (pixels, token ids, ...).
    - `prompt_len`: tokens one prefill writes into the cache (image + text tokens for a VLM).
    - `new_cache(batch, capacity)`: an empty cache (KV cache, SSM state) for `capacity` tokens.
    - `step(token (B, 1), position (1, 1), cache) -> logits (B, 1, vocab)`: one decode step.
    - `fill(cache, batch, context)`: put `context` tokens into the cache (decode mode; outside the timed region).
    - `set_length(cache, n)`: the cache at `n` tokens (static caches; a graph's warm-up runs the step too).
    - `decode_call(token, cache, position)`: decode mode's timed step when it differs from `step` (LLaVA
      decodes at a fixed context with every slot valid); default `step`.
    - `cache_facts(cache, tokens)`: record facts of the cache holding `tokens` (`kv_cache_mib`, `state_mib`).
    - `prefill_extras(inputs)`: facts computed once on real prefill inputs (a reducer's fidelity).
    - `estimate`: the analytic cost model's view per mode (`{"prefill": {...}, "decode": {...}}`), if any.
    - `no_step_graph`: why the decode step cannot be replayed from a CUDA graph (a cache that grows), if so.
    """

    module: torch.nn.Module
    prefill_stages: list[Stage]
    prompt_inputs: Callable[[int], tuple]
    prompt_len: int
    new_cache: Callable[[int, int], Any]
    step: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    fill: Callable[[Any, int, int], None]
    vocab: int
    info: dict[str, Any] = field(default_factory=dict)
    set_length: Callable[[Any, int], None] = lambda cache, n: None
    decode_call: Callable[[torch.Tensor, Any, torch.Tensor], Any] | None = None
    cache_facts: Callable[[Any, int], dict[str, Any]] = _no_facts
    prefill_extras: Callable[[tuple], dict[str, Any]] | None = None
    estimate: dict[str, dict[str, Any]] = field(default_factory=dict)
    no_step_graph: str | None = None


def random_tokens(vocab: int, batch: int, length: int, device) -> torch.Tensor:
    """Token ids drawn from the first 32,000 of the vocabulary (the ids every tokenizer of these models uses)."""
    return torch.randint(0, min(vocab, 32000), (batch, length), device=device)


def lm_scenario(parts: LMParts, mode: str, ctx: BuildContext, new_tokens: int = 32, context: int = 1024,
                runs: int | None = None) -> Built:
    """The `Built` of `parts` in `mode` (prefill, decode or generate; see the module docstring); `runs`:
    generations the generation tracker times (None: its time-budgeted default)."""
    if mode == "prefill":
        return _prefill(parts)
    if mode == "decode":
        return _decode(parts, ctx, context)
    if mode == "generate":
        return _generate(parts, ctx, new_tokens, runs)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _prefill(parts: LMParts) -> Built:
    def make_inputs(batch):
        return (*parts.prompt_inputs(batch), parts.new_cache(batch, parts.prompt_len))

    def extras(module, inputs):
        facts = parts.cache_facts(inputs[-1], parts.prompt_len)
        if parts.prefill_extras is not None:
            facts.update(parts.prefill_extras(inputs))
        return facts

    if len(parts.prefill_stages) == 1:  # one stage is the whole call: no split to time
        (only,) = parts.prefill_stages
        built = Built(parts.module, make_inputs, "tok", items_per_sample=parts.prompt_len, info=parts.info,
                      forward=lambda module, inputs: only.run(inputs), extras=extras)
    else:
        built = Built(parts.module, make_inputs, "tok", items_per_sample=parts.prompt_len, info=parts.info,
                      stages=parts.prefill_stages, extras=extras)
    if "prefill" in parts.estimate:
        built.hooks["estimate"] = parts.estimate["prefill"]
    return built


def _decode(parts: LMParts, ctx: BuildContext, context: int) -> Built:
    timed = parts.decode_call or (lambda token, cache, position: parts.step(token, position, cache))

    def make_inputs(batch):
        cache = parts.new_cache(batch, context + 1)
        with torch.no_grad():  # `context` tokens into the cache, outside the timed region
            parts.fill(cache, batch, context)
        position = torch.full((1, 1), context, dtype=torch.long, device=ctx.device)
        return random_tokens(parts.vocab, batch, 1, ctx.device), cache, position

    def forward(module, inputs):
        return timed(*inputs)

    def extras(module, inputs):
        return {**parts.cache_facts(inputs[1], context + 1), "context_len": context}

    built = Built(parts.module, make_inputs, "tok", items_per_sample=1, forward=forward, info=parts.info,
                  extras=extras)
    if "decode" in parts.estimate:
        built.hooks["estimate"] = parts.estimate["decode"]
    return built


def _generate(parts: LMParts, ctx: BuildContext, new_tokens: int, runs: int | None) -> Built:
    """Stages `prefill` (to the first token) and `decode` (the rest); the call applies the execution mode."""
    prefill_stages = parts.prefill_stages
    info = {**parts.info, "new_tokens": new_tokens, "runs": runs}
    if ctx.exec_mode == "graphs" and parts.no_step_graph:
        raise ParamError(f"--mode generate --graphs: {parts.no_step_graph}; generate eagerly or with --compile")
    if ctx.exec_mode == "graphs":  # each prefill stage its own graph, keyed by the shapes it receives
        eager = {s.name for s in prefill_stages if s.host_sync}
        prefill_stages = graphed_stages(prefill_stages, ctx.device, eager)
        info["prefill_exec"] = "graphs" + (f" ({', '.join(sorted(eager))} eager)" if eager else "")
    else:
        info["prefill_exec"] = "eager"
    prompt_len = parts.prompt_len
    counting = {"eager": False}   # the counting passes run the generation eagerly (Built.counting)
    generators: list = []

    def run_prefill(inputs, cache):
        carry = (*inputs, cache)
        for stage in parts.prefill_stages if counting["eager"] else prefill_stages:
            carry = stage.run(carry)
        return carry

    def make_inputs(batch):
        cache = parts.new_cache(batch, prompt_len + new_tokens)
        generator = Generator(lambda inputs: run_prefill(inputs, cache),
                              lambda token, position: parts.step(token, position, cache),
                              new_tokens, ctx.exec_mode, ctx.device, lambda n: parts.set_length(cache, n))
        generators.append(generator)
        return (*parts.prompt_inputs(batch), generator)

    @contextmanager
    def eagerly():
        """Graphs are captured (and their warm-up calls made) at the first call outside: a count sees one
        prefill and `new_tokens - 1` decode steps, as an eager generation makes them."""
        modes = [(g, g.exec_mode) for g in generators]
        counting["eager"] = True
        for generator, _ in modes:
            generator.exec_mode = "eager"
        try:
            yield
        finally:
            counting["eager"] = False
            for generator, mode in modes:
                generator.exec_mode = mode

    def prefill_stage(inputs):
        return inputs[-1].first_token(inputs[:-1]), inputs[-1]

    def decode_stage(carry):
        token, generator = carry
        return torch.cat([token, *generator.decode_tokens(token, prompt_len, new_tokens - 1)], dim=1)

    def forward(module, inputs):
        return inputs[-1](inputs[:-1], prompt_len)

    stages = [Stage("prefill", prefill_stage, parts.module), Stage("decode", decode_stage, parts.module)]
    built = Built(parts.module, make_inputs, "tok", items_per_sample=new_tokens, forward=forward, info=info,
                  stages=stages, handles_exec_mode=True, counting=eagerly, stages_count_the_call=True)
    built.hooks["generation"] = True
    return built
