"""How to measure: the options common to every component (`RunOptions`). Imports no torch at module level,
so the CLI can show them (and their defaults) without loading torch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effprof.core.errors import UsageError

DTYPE_NAMES = ("bf16", "fp16", "fp32")


def check_device_name(name: str) -> str:
    """The kind a `--device` name asks for (auto, cpu, meta, cuda), checked without torch."""
    if name in ("auto", "cpu", "meta", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name.split(":")[0]
    raise UsageError(f"--device: {name!r} is not one of auto, cuda, cuda:N, cpu, meta")


@dataclass(frozen=True)
class RunOptions:
    """How to measure, common to every component. Times are in seconds.

    `device="meta"` builds the component on PyTorch's meta device and only counts (params, FLOPs, bytes):
    no memory is allocated and nothing is timed, so a 13B model can be counted on a laptop.
    """

    batch: int = 1
    dtype: str = "auto"          # auto = bf16 on cuda and meta, fp32 on cpu
    device: str = "auto"
    warmup: float = 0.1
    min_time: float = 0.1          # at least this much timed work, then stop once steady
    max_time: float | None = None  # hard bound on a row's whole timing (warm-up and setup included)
    max_cv: float | None = 0.02    # steady = CV of the block medians at most this (a fraction)
    seed: int = 0
    cold: bool = False           # flush L2 and rotate inputs between calls
    input_sets: int = 4          # how many input sets --cold rotates through
    graphs: bool = False         # time replays of a CUDA graph of the call
    eager: bool = False          # --eager: neither graphs nor compile, whatever a profile says (as deployed)
    compile: bool = False        # time the torch.compile'd module (compile time reported apart)
    count_flops: bool = True
    flops_crosscheck: bool = False
    flop_coverage: bool | None = None  # None/False: off (opt-in: the profiler pass doubles a CPU row's wall time)
    debug: bool = False          # keep the traceback of a failing row
    tp: int = 1                  # tensor-parallel degree: the LM split over this many processes (effprof/launch/torchrun.py)
    train: bool = False          # time training steps (effprof.measure.training) instead of inference calls
    optimizer: str = "adamw"     # --train: adamw | sgd
    grad_checkpointing: bool = False
    threads: int | None = None   # torch's intra-op threads on cpu (None: torch's default)

    def __post_init__(self):
        if self.eager:  # eager wins over a profile's graphs/compile default (a contradiction on the CLI is refused)
            object.__setattr__(self, "graphs", False)
            object.__setattr__(self, "compile", False)

    def validate(self) -> "RunOptions":
        from effprof.core.limits import check_options

        check_options(self)  # numbers that are numbers, finite and in their bounds (effprof/core/limits.py)
        if self.batch < 1:
            raise UsageError(f"--batch: {self.batch} must be at least 1")
        if self.dtype not in ("auto", *DTYPE_NAMES):
            raise UsageError(f"--dtype: {self.dtype!r} is not one of auto, bf16, fp16, fp32")
        if self.min_time <= 0 or self.warmup < 0:
            raise UsageError("--min-time must be positive and --warmup not negative")
        if self.max_time is not None and self.max_time <= 0:
            raise UsageError(f"--max-time: {self.max_time} must be positive")
        if self.max_cv is not None and not self.max_cv > 0:
            raise UsageError(f"--max-cv: {self.max_cv} must be positive (a fraction: 0.02 = 2%)")
        if self.input_sets < 1:
            raise UsageError("--input-sets must be at least 1")
        if self.tp < 1:
            raise UsageError(f"--tp: {self.tp} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads: {self.threads} must be at least 1")
        if self.optimizer not in ("adamw", "sgd"):
            raise UsageError(f"--optimizer: {self.optimizer!r} is not one of adamw, sgd")
        if self.grad_checkpointing and not self.train:
            raise UsageError("--grad-checkpointing needs --train")
        if self.train and self.tp > 1:
            raise UsageError("--tp splits models for inference; --train with --tp is not measured")
        # The device's kind from its name, without torch: typos and contradictions are refused before torch
        # loads. Only a `cuda...` name (is one visible?) and `auto` with --graphs import torch, last.
        meta = check_device_name(self.device) == "meta"
        if meta and (self.cold or self.compile or self.flops_crosscheck):
            on = [(flag, undo) for flag, undo, asked in (("--cold", "--warm", self.cold),
                                                         ("--compile", "--no-compile", self.compile),
                                                         ("--flops-crosscheck", "--no-flops-crosscheck",
                                                          self.flops_crosscheck)) if asked]
            one = len(on) == 1
            raise UsageError(f"--device meta only counts (params, FLOPs, bytes): {', '.join(f for f, _ in on)} "
                             f"need{'s' if one else ''} a real device (a profile whose rows ask for "
                             f"{'it' if one else 'them'} is counted with {' '.join(u for _, u in on)})")
        if meta and self.tp > 1:
            raise UsageError("--tp starts processes that measure on real devices; --device meta only counts")
        if self.train and meta:
            raise UsageError("--train takes real steps: --device meta only counts")
        if self.device.startswith("cuda") or (self.graphs and self.device == "auto"):
            kind = self.torch_device().type
        else:
            kind = self.device
        if self.graphs and kind != "cuda":
            raise UsageError(f"--graphs needs a CUDA device (CUDA graphs do not exist on {kind})")
        if self.tp > 1:  # N processes (one per GPU, or per core): refused before any starts where they do not fit
            self._check_tp_fits(self.torch_device())
        return self

    def _check_tp_fits(self, device) -> None:
        """`--tp N` starts N processes (one rank per GPU, on CPU per core): refused before any starts when the
        machine has fewer (under torchrun the launcher started the ranks: its world size decides)."""
        import os

        if self.tp <= 1 or all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
            return
        from effprof.core.devices import rank_capacity

        capacity, what = rank_capacity(device)
        if self.tp > capacity:
            raise UsageError(f"--tp: {self.tp} ranks, but this machine has {capacity} {what} (one rank each); "
                             f"--tp at most {capacity}")

    def torch_device(self):
        from effprof.core.devices import resolve_device

        return resolve_device(self.device)

    def torch_dtype(self):
        import torch

        return getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[self.dtype_name()])

    def dtype_name(self) -> str:
        if self.dtype == "auto":
            return "fp32" if self.torch_device().type == "cpu" else "bf16"
        return self.dtype




@dataclass(frozen=True)
class Config:
    """One row to measure: a component, its (unparsed) parameters, options, a display label and notes."""

    component: str
    params: dict[str, Any]
    options: RunOptions
    label: str = ""
    notes: tuple[str, ...] = ()   # how the row's execution differs from what was asked (recorded as exec_note)

    def resolved(self) -> dict[str, Any]:
        from effprof.core.registry import get_component

        return get_component(self.component).resolve(self.params)


def check_rows(configs) -> None:
    """Refuse a row whose parameters or options are bad before anything runs (one line, the first bad row)."""
    for config in configs:
        config.resolved()
        config.options.validate()
