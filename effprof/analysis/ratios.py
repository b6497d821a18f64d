"""How far a speedup between two timed rows can be trusted: its 95% interval from the two medians'
intervals, and whether the rows are too unsteady for the ratio to mean what it says (`ratio_unreliable`,
shown as `~` in tables, with `speedup_note` saying why). Torch-free: plain records in, fields out."""
from __future__ import annotations

import math
from typing import Any

# = effprof.measure.UNSTEADY_CV (analysis/ sits below measure/, so the threshold is repeated here and tested)
UNSTEADY_CV = 0.05

# A speedup is marked unreliable (`ratio_unreliable`, shown as `~`) when a row's CV is above WILD_CV whatever
# the interval (its samples disagree by a factor: 15.7 ms and 0.013 ms on a loaded 2-core host), or when a
# row is unsteady (CV > UNSTEADY_CV) and the ratio's 95% interval spans more than a factor RATIO_SPAN
# (hi / lo), or holds 1 while the ratio claims a change of more than SAME (which way is then unknown).
WILD_CV = 0.5
RATIO_SPAN = 2.0
SAME = 0.1


def _cv(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def speedup_reliability(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The speedup's 95% interval from the two medians' intervals (log space: the half-widths add in
    quadrature) and whether the rows are too unsteady for the ratio to mean what it says."""
    def half_width(r):
        lo, hi = r.get("latency_ms_ci95_low"), r.get("latency_ms_ci95_high")
        return math.log(hi / lo) / 2 if lo and hi and lo > 0 and hi >= lo else None

    fields: dict[str, Any] = {"ratio_unreliable": False}
    widths = [half_width(row), half_width(base)]
    speedup = row["speedup"]
    if None not in widths:
        h = math.hypot(*widths)
        fields.update(speedup_ci95_low=speedup * math.exp(-h), speedup_ci95_high=speedup * math.exp(h))
    cv, base_cv = row.get("latency_cv"), base.get("latency_cv")
    cvs = f"CV {_cv(cv)} here, {_cv(base_cv)} in the baseline ({base.get('label')})"
    span = (fields["speedup_ci95_high"] / fields["speedup_ci95_low"]) if "speedup_ci95_low" in fields else None
    if any(c is not None and c > WILD_CV for c in (cv, base_cv)):
        fields.update(ratio_unreliable=True, speedup_note=f"{cvs}: samples differ by more than a ratio can bear")
    elif (any(c is not None and c > UNSTEADY_CV for c in (cv, base_cv)) and span is not None
          and (span > RATIO_SPAN or (fields["speedup_ci95_low"] <= 1 <= fields["speedup_ci95_high"]
                                     and abs(speedup - 1) > SAME))):
        fields.update(ratio_unreliable=True, speedup_note=f"{cvs}: the ratio's 95% interval is "
                      f"[{fields['speedup_ci95_low']:.3g}, {fields['speedup_ci95_high']:.3g}]")
    return fields
