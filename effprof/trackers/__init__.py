"""Trackers: what is measured besides the latency, one file each (see `effprof.trackers.base`).

Importing this package registers the built-in trackers in the order their fields are computed.
"""
import importlib

from effprof.trackers.base import TRACKERS, Run, Tracker, enabled_trackers, register_tracker, unregister_tracker

BUILTIN = ("params", "counts", "coverage", "paper_flops", "extras", "training", "memory", "nvml", "crosscheck",
           "roofline", "stages", "generation", "estimate", "host", "utilization")
for _module in BUILTIN:
    importlib.import_module(f"effprof.trackers.{_module}")

__all__ = ["TRACKERS", "Run", "Tracker", "enabled_trackers", "register_tracker", "unregister_tracker"]
