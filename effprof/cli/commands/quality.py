"""`effprof quality projectors`: each projector's reconstruction quality (test MSE) beside its cost."""

from dataclasses import replace
from typing import Annotated, Any, Optional

import typer

from effprof.cli.app import CsvPath, EffprofTyper, JsonPath, _check_outputs, app, console, err_console
from effprof.cli.options import common_options
from effprof.core.errors import UsageError

quality_app = EffprofTyper(no_args_is_help=True, help="Quality beside cost (projectors: reconstruction MSE).")
app.add_typer(quality_app, name="quality")


def _overrides(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set: expected NAME=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _with_params(configs, given: dict[str, Any]):
    """Each row with the `given` parameters that its component declares (others are left alone)."""
    from effprof.core.registry import get_component

    rows = []
    for config in configs:
        declared = {p.name for p in get_component(config.component).params}
        if "out_dim" not in declared:
            raise UsageError(f"quality projectors: row {config.label or config.component!r} is not a projector "
                             "(no out_dim parameter)")
        rows.append(replace(config, params={**config.params, **{k: v for k, v in given.items() if k in declared}}))
    unused = [k for k in given if not any(k in {p.name for p in get_component(c.component).params} for c in rows)]
    if unused:
        raise UsageError(f"--set: no row has a parameter {unused[0]!r}")
    return rows


def check_study_options(**values: Any) -> None:
    """Refuse a study option that is not finite or past what a run can finish (effprof.core.limits.STUDY_BOUNDS)."""
    from effprof.core.limits import STUDY_BOUNDS

    for name, value in values.items():
        STUDY_BOUNDS[name].check(value)


@quality_app.command("projectors")
@common_options("device", "min_time")
def projectors_command(
        profile: Annotated[str, typer.Option("--profile", help="Profile whose rows are the projectors.")] = "projectors",
        features: Annotated[Optional[str], typer.Option("--features", help="Tensor file (samples, tokens, channels): "
                                                        "reconstruction; or a dict with inputs/targets.")] = None,
        images_dir: Annotated[Optional[str], typer.Option("--images-dir", help="Images to extract CLIP features "
                                                          "from (with --pretrained).")] = None,
        pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="CLIP checkpoint directory "
                                                          "(for --images-dir).")] = None,
        samples: Annotated[int, typer.Option("--samples", min=2, help="Synthetic samples (without features).")] = 64,
        steps: Annotated[int, typer.Option("--steps", min=1, help="AdamW steps per projector.")] = 200,
        lr: Annotated[float, typer.Option("--lr", min=0, help="Learning rate.")] = 1e-3,
        batch: Annotated[int, typer.Option("--batch", min=1, help="Samples per training step.")] = 8,
        test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.01, max=0.9,
                                                     help="Held-out share of the samples.")] = 0.2,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the batches and the weights.")] = 0,
        set_params: Annotated[Optional[list[str]], typer.Option("--set", help="NAME=VALUE for every row that has "
                                                                "that parameter, e.g. --set out_dim=256.")] = None,
        cost: Annotated[bool, typer.Option("--cost/--no-cost", help="Also measure each row's inference cost.")] = True,
        csv: CsvPath = None, json: JsonPath = None, overrides: dict[str, Any] | None = None):
    """Train each projector of a profile with a small decoder back to the feature space; test MSE beside cost."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from effprof.studies import quality as Q
    from effprof.core.profiles import load_profile
    from effprof.report.files import write_records
    from effprof.launch import launch
    from effprof.runner import RunOptions, build

    _check_outputs(csv, json)
    check_study_options(steps=steps, lr=lr, seed=seed, samples=samples, batch=batch)
    if (images_dir is None) != (pretrained is None):
        raise UsageError("--images-dir and --pretrained go together (a CLIP tower extracts the features)")
    if features is not None and images_dir is not None:
        raise UsageError("give --features or --images-dir, not both")
    loaded = load_profile(profile, RunOptions(min_time=0.2), overrides or {})
    given = _overrides(set_params)
    target = loaded.configs[0].options.torch_device()
    if target.type == "meta":
        raise UsageError("quality trains each projector on real numbers: use --device cpu or cuda, not meta")
    if features is not None:
        data = Q.load_features(features)
    elif images_dir is not None:
        with console.status("extracting CLIP features ..."):
            data = Q.extract_clip_features(images_dir, pretrained, target)
    else:
        data = None
    if data is not None:  # the features decide the projectors' input: tokens and width
        given = {**given, "tokens": str(data.shape[1]), "in_dim": str(data.shape[2])}
    loaded.configs = _with_params(loaded.configs, given)
    loaded.fill()  # labels written with {name} follow --set
    configs = loaded.configs
    values = [c.resolved() for c in configs]
    if data is None:
        data = Q.synthetic_features(samples, values[0]["tokens"], values[0]["in_dim"], seed)
        console.print(f"no --features: using {data.description}", highlight=False)
    records = launch(configs) if cost else [{"label": c.label or c.component, "status": "ok"} for c in configs]
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True)
    with progress:
        for config, record in zip(configs, records):
            label = config.label or config.component
            task = progress.add_task(f"training {label}", total=steps)
            built, row_values, _ = build(replace(config, options=replace(config.options, dtype="fp32")))
            result = Q.projector_quality(
                built.module, built.info.get("tokens_out", row_values["tokens"]), row_values["out_dim"], data,
                steps=steps, lr=lr, batch=batch, test_fraction=test_fraction, seed=seed, device=target,
                on_step=lambda i, loss, t=task, name=label: progress.update(
                    t, completed=i, description=f"training {name} (loss {loss:.4g})"))
            record.update(result.fields(), quality_features=data.description, quality_lr=lr, quality_batch=batch,
                          quality_seed=seed)
            progress.remove_task(task)
    write_records(records, csv, json)
    shown = {k: v for k, v in given.items() if k in ("tokens", "in_dim", "out_dim", "rank")}
    note = f" (with {', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else ""
    console.print(quality_table(records, f"projector quality: {loaded.title}{note}"))
    console.print(f"{data.description}; {steps} AdamW steps, lr {lr:g}, {batch} samples/step, seed {seed}, "
                  f"{test_fraction:.0%} held out; MSE = mean squared error per feature element (fp32); cost columns: "
                  "inference, FLOPs = 2×MAC", style="dim", highlight=False)


def quality_table(records: list[dict[str, Any]], title: str):
    from rich.table import Table

    from effprof.report.table import _num

    table = Table(title=title, title_justify="left")
    for header in ("row", "test MSE", "train MSE", "trained params M", "params M", "GFLOP/call\n(2×MAC)",
                   "latency ms\n(median)", "peak act.\nMiB"):
        table.add_column(header, justify="left" if header == "row" else "right")
    for r in records:
        m = lambda key, scale=1.0: None if r.get(key) is None else r[key] / scale  # noqa: E731
        table.add_row(str(r.get("label")), f"{r['quality_test_mse']:.4g}", f"{r['quality_train_mse']:.4g}",
                      _num(m("quality_trainable_params", 1e6)), _num(m("params_total", 1e6)), _num(r.get("gflops"), 4),
                      _num(r.get("latency_ms_median"), 4), _num(r.get("peak_mem_mib")))
    return table
