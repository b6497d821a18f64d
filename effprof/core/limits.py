"""Bounds on what a user can have meant, declared once: the measurement options' ranges and the largest
size any component parameter may take.

A size that no machine can hold (`--tokens 99999999999999999999999`) or a time that never ends
(`--min-time 1e300`, `--warmup inf`) is refused in one line before anything is built or timed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from effprof.core.errors import UsageError

# An integer parameter that declares no upper bound still gets this one: past it, shape arithmetic in
# torch overflows (a C++ abort) long before memory runs out. Components declare tighter, sane bounds.
INT_CEILING = 2**31 - 1


@dataclass(frozen=True)
class Bound:
    """The allowed range of one numeric measurement option (`--min-time`, ...)."""

    option: str
    low: float
    high: float
    low_open: bool = False
    unit: str = ""

    def check(self, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{self.option}: {value!r} is not a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{self.option}: {value} is not a finite number")
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            lo = "(" if self.low_open else "["
            raise UsageError(f"{self.option}: {_fmt(value)} is outside {lo}{_fmt(self.low)}, {_fmt(self.high)}]"
                             + (f" {self.unit}" if self.unit else ""))


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# RunOptions field -> its bound. Times: an hour of timing per row and ten minutes of warm-up are more than
# any measurement needs; past them a typo (1e300) would run until killed.
OPTION_BOUNDS = {
    "batch": Bound("--batch", 1, 2**20),
    "warmup": Bound("--warmup", 0, 600, unit="s"),
    "min_time": Bound("--min-time", 0, 3600, low_open=True, unit="s"),
    "max_time": Bound("--max-time", 0, 4 * 3600, low_open=True, unit="s"),
    "max_cv": Bound("--max-cv", 0, 1, low_open=True),
    "seed": Bound("--seed", 0, 2**63 - 2),  # torch seeds are 64-bit; effprof seeds the inputs with seed + 1
    "input_sets": Bound("input_sets", 1, 64),
    "threads": Bound("--threads", 1, 4096),
}


def check_options(options: Any) -> None:
    """Refuse a RunOptions whose numbers are not numbers, not finite or out of their bounds."""
    for name, bound in OPTION_BOUNDS.items():
        if hasattr(options, name):
            bound.check(getattr(options, name))
    if isinstance(options.device, str) and not options.device.strip():
        raise UsageError("--device: empty (auto, cpu, cuda or cuda:N)")


# Declared upper bounds of component size parameters (`Param(..., high=...)`): far above any published
# model (the largest widths are ~16k, the longest contexts ~1M tokens), far below a size whose shape
# arithmetic overflows. What fits a given machine is judged apart, from the footprint (measure/footprint.py).
MAX_WIDTH = 2**16        # channels, model widths, feature dims, ranks
MAX_TOKENS = 2**22       # sequence lengths, tokens per item, kernel lengths
MAX_LAYERS = 1024        # layers of a model
MAX_STATE = 4096         # SSM state size, conv widths, expansion factors, ratios
MAX_IMAGE_SIDE = 2**14   # pixels
MAX_WORKERS = 256        # worker processes of a comparison (`compare --workers N`)
MAX_TP = 1024            # tensor-parallel ranks (`--tp N`): one process each; the machine's own bound is tighter

# Input files read whole: a records file (`diff`, `roofline --from-json`), a class map, a profile. Past
# these sizes the file is not what the option expects (256 MiB of JSON holds millions of rows).
MAX_RECORDS_BYTES = 256 * 2**20
MAX_TEXT_BYTES = 16 * 2**20
# Nesting of a records file: a record is flat (values, lists of numbers, a mapping of those at most).
MAX_RECORD_DEPTH = 4
# Every number in a records file lies in [RECORD_VALUE_MIN, RECORD_VALUE_MAX] in magnitude (or is 0 where 0
# is allowed): no time, size, rate or count effprof writes comes near either end, and plotting or dividing
# values past them overflows.
RECORD_VALUE_MIN = 1e-12
RECORD_VALUE_MAX = 1e15

# `effprof quality projectors`: a training study. 10^6 AdamW steps of the largest projector take hours; a
# learning rate past 10 diverges in any optimiser; seeds as --seed.
MAX_TRAIN_STEPS = 1_000_000
STUDY_BOUNDS = {
    "steps": Bound("--steps", 1, MAX_TRAIN_STEPS),
    "lr": Bound("--lr", 0, 10, low_open=True),
    "seed": Bound("--seed", 0, 2**63 - 2),
    "samples": Bound("--samples", 2, 2**20),
    "batch": Bound("--batch", 1, 2**20),
}
# LoRA's scale numerator (`--alpha`; adapters scale by alpha / rank): published values are 8 to 512; past
# 65,504 (fp16's largest number) the scale alone overflows a half-precision output.
MAX_LORA_ALPHA = 65504.0
# A generation loop runs one decode step per token from Python, at least ~1 ms each on any device (and on
# meta, which only counts): 8192 steps are seconds to minutes per call, every timed call; 100,000 never
# finish a row. Twice the context LLaVA-1.5 and Vicuna were trained with (4096).
MAX_NEW_TOKENS = 8192
