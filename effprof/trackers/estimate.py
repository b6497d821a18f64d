"""The analytic cost model beside the measurement (`effprof.measure.estimate`) for components that declare an
LLM shape (`Built.hooks["estimate"]`: shape, stage, tokens, and the record field holding the measured time
of that stage). Columns: `estimate_gflops` (matrix products of the LM stage, must equal its counted FLOPs),
`estimate_mib` (bytes moved, MiB), `estimate_ms` (the bound on this device's ceilings; none on CPU) and
`measured_over_estimate` (the measured stage time / that bound: how far reality is from the roofline model).
"""
from __future__ import annotations

from effprof.measure.estimate import estimate
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class EstimateTracker(Tracker):
    name = "estimate"

    @classmethod
    def enabled(cls, run):
        return "estimate" in run.built.hooks

    def fields(self, run):
        spec = run.built.hooks["estimate"]
        tokens, note = reduced_tokens(spec, run.record)
        # the LLaVA pipeline's static cache keeps the unreduced length: a shortened prefill attends over all of it
        kv_tokens = spec["tokens"] if tokens != spec["tokens"] and spec.get("static_cache") else None
        est = estimate(spec["shape"], spec["stage"], run.options.batch, tokens, spec.get("weight", "bf16"),
                       spec.get("head", True), kv_tokens)
        fields = {"estimate_stage": spec["stage"], "estimate_gflops": est.flops / 1e9,
                  "estimate_mib": est.bytes / 2**20, "estimate_method": "LLM-Viewer-style roofline, analytic",
                  "estimate_tokens": tokens}
        sixteen_bit = run.record.get("dtype") in ("bf16", "fp16")  # the model's activations and cache are 16-bit
        if not sixteen_bit:
            note = "; ".join(filter(None, [note, f"the model is of a 16-bit deployment; this row ran "
                                                 f"{run.record.get('dtype')}: no measured / estimate ratio"]))
        if note:
            fields["estimate_note"] = note
        if run.device.type != "cuda" or not sixteen_bit:
            return fields
        from effprof.measure.calibrate import ceilings

        ceil = ceilings(run.device)
        peak, bandwidth = ceil.compute_tflops(run.record["dtype"]), ceil.bandwidth_gb_per_s
        if not peak or not bandwidth:
            return fields
        bound = est.bound_ms(peak, bandwidth)
        measured = run.record.get(spec["measured_field"])
        fields.update(estimate_ms=bound, estimate_ceilings=ceil.source,
                      measured_over_estimate=measured / bound if measured else None)
        return fields


def reduced_tokens(spec, record) -> tuple[int, str | None]:
    """The prefill length the LM really received: a vision-side reducer's output (`image_tokens_out`) in place
    of the image tokens. An LM reducer drops tokens between layers, which the one-length model does not
    follow: the estimate then stays at the unreduced length and says so."""
    tokens = spec["tokens"]
    if spec["stage"] != "prefill" or record.get("image_tokens_out") is None or record.get("image_tokens") is None:
        return tokens, None
    if ">" in str(record.get("lm_tokens_per_layer") or ""):
        return tokens, "the LM reducer drops tokens between layers: estimated at the unreduced length"
    return tokens - record["image_tokens"] + record["image_tokens_out"], None
