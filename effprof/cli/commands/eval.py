"""`effprof eval COMPONENT --data DIR`: top-1/top-5 on an image folder and the cost, in one record."""

import importlib.util
from typing import Annotated, Any, Optional

import typer

from effprof.cli.app import CsvPath, JsonPath, _check_outputs, _component_args, app, console
from effprof.cli.options import common_options
from effprof.core.errors import MissingExtra, ParamError, UsageError
from effprof.core.limits import MAX_WORKERS
from effprof.core.options import RunOptions

EVAL_BATCH = 64  # images per forward unless --batch says otherwise


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options("batch", "dtype", "device", "seed", "warmup", "min_time", "max_time")
def eval_command(ctx: typer.Context,
                 component: Annotated[str, typer.Argument(help="An image classifier (e.g. vmamba, mambavision).")],
                 data: Annotated[str, typer.Option("--data", help="Image folder: DIR/<class>/<image>.")],
                 pretrained: Annotated[Optional[str], typer.Option(
                     "--pretrained", help="Weights: .safetensors, or a torch file read with weights_only=True.")] = None,
                 img_size: Annotated[Optional[int], typer.Option("--img-size", help="Evaluation resolution.")] = None,
                 num_classes: Annotated[Optional[int], typer.Option(
                     "--num-classes", help="Classes of a fresh head (the checkpoint's head is dropped).")] = None,
                 class_map: Annotated[Optional[str], typer.Option(
                     "--class-map", help="Folder name -> head index (JSON or 'name index' lines).")] = None,
                 workers: Annotated[int, typer.Option("--workers", min=1, help="Decoding threads.")] = 8,
                 csv: CsvPath = None, json: JsonPath = None, overrides: dict[str, Any] | None = None):
    """Top-1/top-5 accuracy on an image folder, images/s with decoding and of the model, and the cost columns."""
    from effprof.studies.evaluate import apply_checkpoint, evaluate, load_checkpoint, read_class_map, scan_folder
    from effprof.core.registry import get_component
    from effprof.report.files import write_records
    from effprof.report.table import print_records
    from effprof.runner import Config, build, measure

    _check_outputs(csv, json)
    for option, value in (("--pretrained", pretrained), ("--class-map", class_map), ("--data", data)):
        if value is not None and not value.strip():
            raise UsageError(f"{option}: the path is empty (name a file{', or leave it out for random weights' if option == '--pretrained' else ''})")
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers: {workers} decoding threads is outside [1, {MAX_WORKERS}]")
    if importlib.util.find_spec("PIL") is None:
        raise MissingExtra("effprof eval decodes images with Pillow: pip install 'effprof[eval]'")
    params = _component_args(component, list(ctx.args))
    declared = {p.name for p in get_component(component).params}
    for name, value in (("img_size", img_size), ("num_classes", num_classes)):
        if value is not None:
            if name not in declared:
                raise ParamError(f"{component}: has no --{name.replace('_', '-')} parameter")
            params[name] = str(value)
    mapping = read_class_map(class_map) if class_map else None
    folder = scan_folder(data, mapping)          # refuse bad data before building anything
    options = RunOptions(**{"batch": EVAL_BATCH, **(overrides or {})}).validate()
    if options.torch_device().type == "meta":
        raise UsageError("eval runs images through the model: use --device cpu or cuda, not meta")
    config = Config(component, params, options, label=f"{component} eval")
    built, values, build_ctx = build(config)
    preprocess = getattr(built.module, "preprocess", None)
    if preprocess is None or built.forward is not None or built.stages is not None:
        raise UsageError(f"{component} is not an image classifier with declared evaluation preprocessing")
    fresh = []
    if pretrained:
        fresh = apply_checkpoint(built.module, load_checkpoint(pretrained), pretrained)
    with console.status(f"evaluating {component} on {len(folder.samples)} images ..."):
        result = evaluate(built.module, folder, preprocess, build_ctx.device, build_ctx.dtype, options.batch,
                          workers, mapped=mapping is not None)
        record = measure(config)
    record.update(result, weights=pretrained or "random", head="fresh" if fresh else "checkpoint" if pretrained
                  else "random", cost_note="cost columns: the same configuration timed by effprof run")
    print_records([record], title=f"effprof eval {component} on {data}", console=console)
    write_records([record], csv, json)
