"""`effprof estimate COMPONENT [--PARAM ...]`: the analytic prefill and decode cost of a component's LM."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from effprof.cli.app import _component_args, app, console
from effprof.cli.options import common_options
from effprof.core.errors import UsageError


@app.command("estimate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options("batch", "device")
def estimate_command(ctx: typer.Context,
                     component: Annotated[str, typer.Argument(help="A component with an LLM (e.g. llava).")],
                     gpu: Annotated[Optional[str], typer.Option("--gpu", help="Ceilings of this GPU's datasheet "
                                                                "(e.g. H100, H200, A100); default: this machine's "
                                                                "GPU, measured or datasheet.")] = None,
                     overrides: dict[str, Any] | None = None):
    """Analytic per-layer operations, bytes, intensity and time bound of LLM prefill and decode
    (LLM-Viewer's method), for bf16/fp16 weights and, analytically, int8 and int4."""
    from effprof.report.estimate import estimate_tables
    from effprof.studies.inspection import estimate_ceilings
    from effprof.runner import Config, RunOptions, build

    if gpu is not None and not gpu.strip():  # empty is refused, never read as "this machine's"
        raise UsageError("--gpu: empty (name a GPU such as H100, or leave it out for this machine's)")
    params = _component_args(component, list(ctx.args))
    options = RunOptions(batch=overrides.get("batch", 1), device="meta").validate()
    built, values, _ = build(Config(component, params, options))
    spec = built.hooks.get("estimate")
    if spec is None:
        raise UsageError(f"estimate: {component} declares no LLM shape (components that do: llava)")
    ceilings = estimate_ceilings(gpu, overrides.get("device", "auto"))
    for table in estimate_tables(spec, values, options.batch, ceilings):
        console.print(table)
