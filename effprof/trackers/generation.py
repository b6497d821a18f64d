"""Time to first token and time per output token of a generating pipeline (`--mode generate`).

Each generation stamps the device timeline at its start, after its first token and after every later token
(`effprof.models.generation.TokenClock`). Over several generations on the same inputs (at least 3, until
`min_time` is spent): `ttft_ms` (median of start -> first token), `tpot_ms_mean` / `_p50` / `_p90` over every
later token of every generation, `e2e_ms` (median of start -> last token) and `gen_tokens_per_s` = batch ×
new tokens / e2e. Measured directly: no figure is a difference of two others.
"""
from __future__ import annotations

import statistics

from effprof.measure.timing import quantile
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class GenerationTracker(Tracker):
    name = "generation"

    @classmethod
    def enabled(cls, run):
        return bool(run.built.hooks.get("generation")) and not run.count_only

    def fields(self, run):
        inputs = run.input_sets[0]
        clock = inputs[-1].clock
        ttft, tpot, e2e = [], [], []
        spent, reps = 0.0, 0
        while reps < 3 or (spent < run.options.min_time and reps < 100):
            clock.armed = True
            try:
                run.built.call(inputs)
                intervals = clock.intervals_ms()
            finally:
                clock.armed = False
            ttft.append(intervals[0])
            tpot.extend(intervals[1:])
            e2e.append(sum(intervals))
            spent += e2e[-1] / 1e3
            reps += 1
        new_tokens = run.record.get("new_tokens") or len(intervals)
        fields = {"ttft_ms": statistics.median(ttft), "e2e_ms": statistics.median(e2e), "generations_timed": reps,
                  "gen_tokens_per_s": run.options.batch * new_tokens / (statistics.median(e2e) / 1e3),
                  "tpot_method": "device-timeline stamps after every token"}
        if tpot:
            fields.update(tpot_ms_mean=statistics.fmean(tpot), tpot_ms_p50=quantile(tpot, 0.5),
                          tpot_ms_p90=quantile(tpot, 0.9))
        return fields
