"""Serving-grade latency of a generating pipeline (`--mode generate`), in vLLM's and AIPerf's vocabulary.

Each generation stamps the device timeline at its start, after its first token and after every later token
(`effprof.models.generation.TokenClock`), so every figure is measured, never a difference of two others.
Over N generations of the same inputs (`--runs N`; by default at least 10, more while 2 × `--min-time` lasts,
at most 200):

- TTFT: start -> first token, one value per generation (`ttft_ms` = its median);
- TPOT: time per output token of one generation, (end - first token) / (new tokens - 1) (vLLM's definition),
  one value per generation;
- ITL: inter-token latency, every gap between two consecutive tokens of every generation;
- E2E: start -> last token, one value per generation (`e2e_ms` = its median); `gen_tokens_per_s` = batch ×
  new tokens / median E2E.

Each metric gets its mean, p50/p90/p95/p99 (linear interpolation between order statistics, as numpy's default;
a p99 over fewer than 100 values is close to the largest one, and `generations_timed` says how many there
were), its CV (std / mean) and a t-interval of its mean (95%, `*_ci95_low` / `*_ci95_high`).

Energy per token by phase (CUDA with NVML): the prefill alone and the decode steps alone are each repeated
for at least a second inside an `NvmlSampler` (the board's energy counter is too coarse for one 20 ms prefill):
`energy_prefill_j_per_token` per prompt token and `energy_decode_j_per_token` per generated token, raw (idle
power included, as Zeus and the ML.ENERGY leaderboard report it) and `_above_idle` (idle power × duration
subtracted; see effprof.measure.nvml for why that is a lower bound).
"""
from __future__ import annotations

import math
import statistics
import time

from effprof.analysis.stats import t_quantile_975
from effprof.measure.timing import quantile
from effprof.trackers.base import Tracker, register_tracker

MIN_RUNS, MAX_RUNS = 10, 200
PERCENTILES = (50, 90, 95, 99)
ENERGY_S = 1.0  # seconds each phase repeats for its energy figure


def metric_fields(name: str, values: list[float]) -> dict[str, float | None]:
    """`{name}_ms_mean`, `_p50` … `_p99`, `{name}_cv` and the 95% t-interval of the mean of `values` (ms)."""
    if not values:
        return {}
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    half = t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values)) if len(values) > 1 else None
    fields: dict[str, float | None] = {f"{name}_ms_mean": mean}
    fields.update({f"{name}_ms_p{p}": quantile(values, p / 100) for p in PERCENTILES})
    fields[f"{name}_cv"] = sd / mean if mean > 0 else None
    fields[f"{name}_ms_ci95_low"] = None if half is None else mean - half
    fields[f"{name}_ms_ci95_high"] = None if half is None else mean + half
    return fields


@register_tracker
class GenerationTracker(Tracker):
    name = "generation"

    @classmethod
    def enabled(cls, run):
        return bool(run.built.hooks.get("generation")) and not run.count_only

    def fields(self, run):
        inputs = run.input_sets[0]
        generator = inputs[-1]
        clock = generator.clock
        runs = run.built.info.get("runs")
        budget = 2 * run.options.min_time
        ttft, tpot, itl, e2e = [], [], [], []
        spent = 0.0
        while (len(e2e) < runs) if runs else (len(e2e) < MIN_RUNS or (spent < budget and len(e2e) < MAX_RUNS)):
            clock.armed = True
            try:
                run.built.call(inputs)
                intervals = clock.intervals_ms()
            finally:
                clock.armed = False
            ttft.append(intervals[0])
            itl.extend(intervals[1:])
            if len(intervals) > 1:
                tpot.append(sum(intervals[1:]) / (len(intervals) - 1))
            e2e.append(sum(intervals))
            spent += e2e[-1] / 1e3
        new_tokens = run.record.get("new_tokens") or len(intervals)
        fields = {"ttft_ms": statistics.median(ttft), "e2e_ms": statistics.median(e2e), "generations_timed": len(e2e),
                  "gen_tokens_per_s": run.options.batch * new_tokens / (statistics.median(e2e) / 1e3),
                  "tpot_method": "device-timeline stamps after every token; TPOT per generation = (last - first "
                                 "token) / (new tokens - 1), ITL = every gap; percentiles by linear interpolation"}
        for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
            fields.update(metric_fields(name, values))
        if run.device.type == "cuda":
            fields.update(phase_energy(run, generator, inputs))
        return fields


def phase_energy(run, generator, inputs) -> dict[str, float | str | None]:
    """Joules per token of the prefill alone and of the decode steps alone, each repeated for `ENERGY_S`."""
    import torch

    from effprof.measure.nvml import NvmlSampler

    prompt = inputs[:-1]
    prompt_tokens = run.record.get("sequence_tokens") or run.items_per_call
    batch = run.options.batch
    token = generator.first_token(prompt)
    out: dict[str, float | str | None] = {}
    for phase in ("prefill", "decode"):
        sampler = NvmlSampler(run.device, idle_s=0.3, idle_once=True)
        calls, tokens = 0, 0
        with sampler:
            if not sampler.available:
                return {"energy_phase_note": sampler.note or "NVML unavailable"}
            start = time.perf_counter()
            while time.perf_counter() - start < ENERGY_S or calls < 3:
                if phase == "prefill":
                    generator.first_token(prompt)
                    tokens += prompt_tokens * batch
                else:
                    generator.decode_tokens(token, prompt_tokens, generator.new_tokens - 1)
                    tokens += (generator.new_tokens - 1) * batch
                calls += 1
                torch.cuda.synchronize(run.device)
        joules, method = sampler.energy()
        if joules is None or tokens == 0:
            out[f"energy_{phase}_j_per_token"] = None
            continue
        out[f"energy_{phase}_j_per_token"] = joules / tokens
        if sampler.idle_power_w is not None:
            out[f"energy_{phase}_above_idle_j_per_token"] = (
                joules - sampler.idle_power_w * (sampler.end_s - sampler.start_s)) / tokens
        out["energy_phase_method"] = f"{method}; each phase repeated alone for >= {ENERGY_S:g} s"
    return out
