"""The common measurement options, declared once.

Each `CommonOption` names a `RunOptions` field, its flag(s), type and help; the default shown in the help
is `RunOptions`' own. `@common_options(...)` adds the declared options to a typer command and hands the
ones the user gave to the command as one dict, `overrides` (RunOptions field -> value): a new common
option is one line here and one field in `RunOptions`, not an edit to every command.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from typing import Annotated, Any, Callable, Optional

import typer


@dataclass(frozen=True)
class CommonOption:
    field: str        # the RunOptions field
    flags: tuple      # typer's spelling, e.g. ("--batch",) or ("--cold/--warm",)
    type: type
    help: str

    @property
    def dest(self) -> str:
        return "opt_" + self.field


COMMON: tuple[CommonOption, ...] = (
    CommonOption("batch", ("--batch",), int, "Batch size (items per call = batch × items per sample)."),
    CommonOption("dtype", ("--dtype",), str, "bf16 | fp16 | fp32 | auto (bf16 on cuda and meta, fp32 on cpu)."),
    CommonOption("device", ("--device",), str, "auto | cuda | cpu | meta (auto = cuda when available; meta = "
                 "count params, FLOPs and bytes without allocating or timing)."),
    CommonOption("warmup", ("--warmup",), float, "Warm-up seconds (at least one call)."),
    CommonOption("min_time", ("--min-time",), float, "At least this many seconds of timed calls, then stop once "
                 "steady (see --max-cv)."),
    CommonOption("max_time", ("--max-time",), float, "Hard bound on a row's timing seconds, warm-up and L2 flushes "
                 "included (none = a row that never gets steady stops after 10 × min-time of timing)."),
    CommonOption("max_cv", ("--max-cv",), float, "Stop timing once the CV of the block medians is at most this "
                 "(a fraction) or the median's 95% CI is within ±this/4 (a large value such as 1 stops at --min-time)."),
    CommonOption("seed", ("--seed",), int, "Seed for random weights and inputs."),
    CommonOption("threads", ("--threads",), int, "torch's CPU threads for the row (torch.set_num_threads; none = "
                 "torch's default, one per core). On a shared host fewer threads than cores may steady the timings."),
    CommonOption("cold", ("--cold/--warm",), bool, "Flush the L2 cache and rotate input sets between calls."),
    CommonOption("graphs", ("--graphs/--no-graphs",), bool, "Time replays of a CUDA graph of the call (some "
                 "profiles default to it on CUDA; off CUDA they fall back to eager with a note)."),
    CommonOption("eager", ("--eager",), bool, "Time the call as deployed, kernels launched one by one from Python "
                 "(neither graphs nor compile, whatever the profile says): the host-bound figure."),
    CommonOption("compile", ("--compile/--no-compile",), bool,
                 "Time the torch.compile'd module (compile time reported apart)."),
    CommonOption("flops_crosscheck", ("--flops-crosscheck/--no-flops-crosscheck",), bool,
                 "Add fvcore's and thop's counts (flops extra)."),
    CommonOption("flop_coverage", ("--flop-coverage/--no-flop-coverage",), bool,
                 "FLOP coverage from one profiler pass after timing (opt-in: on cpu the pass costs about the "
                 "row's own time; on cuda CUPTI stays loaded after a profiler session and slows later kernels)."),
    CommonOption("debug", ("--debug/--no-debug",), bool, "Keep the traceback of a failing row (default: one line)."),
    CommonOption("train", ("--train/--no-train",), bool, "Time training steps: forward, loss, backward, optimizer "
                 "step, zero_grad; only the component's trainable parameters get gradients."),
    CommonOption("optimizer", ("--optimizer",), str, "With --train: adamw | sgd (momentum 0.9)."),
    CommonOption("grad_checkpointing", ("--grad-checkpointing/--no-grad-checkpointing",), bool,
                 "With --train: activation checkpointing (transformers models)."),
)
BY_FIELD = {o.field: o for o in COMMON}


def run_option_defaults() -> dict[str, Any]:
    from effprof.core.options import RunOptions  # torch-free

    return {f.name: f.default for f in fields(RunOptions)}


def annotation(option: CommonOption, default: Any = "?") -> Any:
    shown = "" if default == "?" else f" (default: {'none' if default is None else default})"
    return Annotated[Optional[option.type], typer.Option(*option.flags, help=option.help + shown,
                                                         show_default=False)]


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse options that contradict each other before anything runs (one line)."""
    from effprof.core.errors import UsageError

    if overrides.get("eager"):
        both = [f"--{name}" for name in ("graphs", "compile") if overrides.get(name)]
        if both:
            raise UsageError(f"--eager times the call as deployed: drop {' and '.join(both)}")


def common_options(*only: str, defaults: dict[str, Any] | None = None) -> Callable:
    """Decorate a typer command: add the common options (all, or those named in `only`) as keyword
    options and call the command with `overrides={field: value}` of the ones given."""
    chosen = [o for o in COMMON if not only or o.field in only]

    def decorate(fn):
        # eval_str: the command's own annotations are strings under `from __future__ import annotations`;
        # a `__signature__` is taken as is by typer, so unresolved strings would lose their typer.Option/Argument
        # (their help, their flags, an Argument turned into an option).
        signature = inspect.signature(fn, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "overrides"]
        shown = defaults if defaults is not None else run_option_defaults()
        added = [inspect.Parameter(o.dest, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=annotation(o, shown.get(o.field, "?"))) for o in chosen]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            overrides = {o.field: kwargs.pop(o.dest) for o in chosen if kwargs.get(o.dest) is not None}
            for o in chosen:
                kwargs.pop(o.dest, None)
            check_overrides(overrides)
            return fn(*args, overrides=overrides, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=kept + added)
        return wrapper

    return decorate
