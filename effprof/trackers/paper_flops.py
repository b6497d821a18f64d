"""The vision papers' "GFLOPs" beside effprof's: fvcore-style MACs per image (effprof.measure.paper_flops).

Counted for image models called as `module(images)` (unit "img", no custom forward, no stages), on the
first image of the inputs, once, outside the timed region (on the meta device too).
`paper_gmacs_per_img` is comparable with the figures VMamba, MambaVision or ViT papers print
(VMamba-T 4.9G); effprof's `gflops` (2 × MAC, attention and scans counted, whole batch) is the figure
to divide by time.
"""
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class PaperFlopsTracker(Tracker):
    name = "paper_flops"

    @classmethod
    def enabled(cls, run):
        built = run.built
        return (run.options.count_flops and built.unit == "img" and built.forward is None
                and built.stages is None)

    def before(self, run):
        import torch

        from effprof.measure.paper_flops import PAPER_CONVENTION, paper_macs

        one = tuple(t[:1] if isinstance(t, torch.Tensor) else t for t in run.input_sets[0])
        try:
            macs = paper_macs(lambda: run.built.module(*one))
        except Exception as exc:  # a module that cannot run on one image: say so, keep the row
            run.record["paper_gmacs_note"] = f"not counted ({type(exc).__name__})"
            return
        run.record["paper_gmacs_per_img"] = macs / 1e9
        run.record["paper_gmacs_convention"] = PAPER_CONVENTION
