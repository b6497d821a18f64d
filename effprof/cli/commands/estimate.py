"""`effprof estimate COMPONENT [--PARAM ...]`: the analytic prefill and decode cost of a component's LM
(llava, cobra, mamba-lm, transformer-lm: every component whose build declares `Built.hooks["estimate"]`)."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from effprof.cli.app import _component_args, app, console
from effprof.cli.options import common_options
from effprof.core.errors import UsageError

# The built-in components whose builds declare an LM shape (their prefill and decode modes): named in a refusal.
ESTIMABLE = ("llava", "cobra", "mamba-lm", "transformer-lm")


@app.command("estimate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options("batch", "device")
def estimate_command(ctx: typer.Context,
                     component: Annotated[str, typer.Argument(help="A component with an LM: llava, cobra, mamba-lm, "
                                                             "transformer-lm.")],
                     gpu: Annotated[Optional[str], typer.Option("--gpu", help="Ceilings of this GPU's datasheet "
                                                                "(e.g. H100, H200, A100); default: this machine's "
                                                                "GPU, measured or datasheet.")] = None,
                     overrides: dict[str, Any] | None = None):
    """Analytic per-layer operations, bytes, intensity and time bound of LLM prefill and decode
    (LLM-Viewer's method), for bf16/fp16 weights and, analytically, int8 and int4. Bytes in MiB/GiB."""
    from effprof.core.options import Config, RunOptions

    if gpu is not None and not gpu.strip():  # empty is refused, never read as "this machine's"
        raise UsageError("--gpu: empty (name a GPU such as H100, or leave it out for this machine's)")
    params = _component_args(component, list(ctx.args))
    options = RunOptions(batch=overrides.get("batch", 1), device="meta").validate()
    config = Config(component, params, options)
    config.resolved()  # names and ranges refused before torch is imported

    from effprof.report.estimate import estimate_tables
    from effprof.runner import build
    from effprof.studies.inspection import estimate_ceilings

    built, values, _ = build(config)
    spec = built.hooks.get("estimate")
    if spec is None:
        raise UsageError(f"estimate: {component} declares no LM shape in --mode {values.get('mode', '?')} (components "
                         f"that do: {', '.join(ESTIMABLE)})")
    ceilings = estimate_ceilings(gpu, overrides.get("device", "auto"))
    for table in estimate_tables(spec, values, options.batch, ceilings):
        console.print(table)
