"""Components that are not registered: a factory in any Python file, or a Hugging Face model in the cache.

    effprof run path/to/models.py:make_model --width 512 --input-shape 1x3x224x224
    effprof run hf:openai-community/gpt2 --seq-len 512
    effprof run hf:google/vit-base-patch16-224 --pretrained

`get_component` answers such names with a `Component` made here; nothing is added to the registry, and
profiles may name them as rows (a relative file is found beside the profile). No torch at import.

A file factory's typed keyword arguments (int, float, str, bool, optionally `| None`) become its parameters,
with their defaults (an argument without a default is required); an argument named `ctx` receives the
`BuildContext` (device, dtype, seed). It may return

- an `nn.Module`: moved to the device and dtype; its input is a random tensor of `--input-shape` (e.g.
  `1x3x224x224`, the shape at batch 1: `--batch N` multiplies the leading dimension), one item per leading
  index, in `--unit` (img by default);
- a `(module, make_inputs)` pair: `make_inputs(batch)` returns the call's positional arguments (tensors
  are moved to the device; floating ones to the dtype); one item per batch element;
- a `Built`, used as it is.

`hf:MODEL_ID` builds `transformers.AutoModel` from the config of a model already in the Hugging Face cache
(`HF_HUB_CACHE`, or a local directory after `hf:`), with random weights unless `--pretrained` (then the
cached weights); nothing is downloaded. Its input is `input_ids` of `--seq-len` tokens for a model with a
vocabulary (unit tok), else `pixel_values` of the config's image size, or of `--input-shape` (unit img).
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Any

from effprof.core.errors import EffprofError, PretrainedNotFound, UnknownComponent, UsageError, UserCodeError
from effprof.core.fileio import expand
from effprof.core.libwarnings import quiet_libraries
from effprof.core.params import Param
from effprof.core.registry import Built, Component, is_external, register_external_source

_CACHE: dict[str, Any] = {}
_TYPES = (int, float, str, bool)
INPUT_SHAPE = Param("input_shape", str, None, "Input shape at batch 1, e.g. 1x3x224x224 (for a factory that "
                    "returns an nn.Module; --batch multiplies the leading dimension).", optional=True)
UNIT = Param("unit", str, "img", "What one item is (throughput unit).", choices=("img", "tok", "seq"))


def external_component(name: str):
    """The Component for an external name (built once per process)."""
    if name not in _CACHE:
        _CACHE[name] = _hf_component(name) if name.startswith("hf:") else _file_component(name)
    return _CACHE[name]


# -- a factory in a Python file -------------------------------------------------------------------------

def user_frame(tb, path: Path) -> str:
    """`file:line` of the innermost traceback frame in the user's file `path` (else the innermost frame)."""
    frames = traceback.extract_tb(tb)
    try:
        mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    except OSError:
        mine = []
    frame = (mine or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame is not None else str(path)


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_function(name: str):
    path_text, _, func = name.rpartition(":")
    path = expand(path_text, "file")  # ~user of an unknown user: one line
    try:
        found = path.is_file()
        resolved = path.resolve()
    except OSError as exc:  # a name longer than the file system allows (ENAMETOOLONG), a loop of links
        raise UnknownComponent(f"{name[:80]}{'...' if len(name) > 80 else ''}: cannot use that path "
                               f"({exc.strerror or exc})") from None
    if not found:
        raise UnknownComponent(f"{name}: no file {path_text}")
    module_name = f"effprof_user_{path.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            with quiet_libraries():
                spec.loader.exec_module(module)
        except SystemExit as exc:  # the module's own sys.exit(): its import never finished
            raise UsageError(f"{path_text}: cannot import: it called sys.exit({exc.code!r}) at import (at "
                             f"{user_frame(exc.__traceback__, path)})") from None
        except Exception as exc:
            raise UsageError(f"{path_text}: cannot import ({_first_line(exc)}, at "
                             f"{user_frame(exc.__traceback__, path)})") from None
        sys.modules[module_name] = module
    module = sys.modules[module_name]
    factory = getattr(module, func, None)
    if not callable(factory):
        found = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                 and getattr(v, "__module__", None) == module_name]
        raise UnknownComponent(f"{name}: {path_text} has no function {func!r} (functions: {', '.join(found) or 'none'})")
    if inspect.iscoroutinefunction(factory) or inspect.isasyncgenfunction(factory):
        raise UsageError(f"{name}: an async function; effprof calls a factory directly: define it with def")
    return factory, path


def call_factory(factory, name: str, path: Path, *args, **kwargs):
    """Call the user's factory; what it raises is reported as its failure, with the file and line where it
    happened (`UserCodeError`, a failed row), and a `sys.exit()` inside it as such, never as effprof's
    exit. Library warnings it triggers are kept for --debug (`captured_warnings`)."""
    try:
        with quiet_libraries():
            return factory(*args, **kwargs)
    except EffprofError:
        raise
    except SystemExit as exc:
        raise UserCodeError(f"the factory called sys.exit({exc.code!r}) while building (at "
                            f"{user_frame(exc.__traceback__, path)}); a factory returns a module") from None
    except MemoryError:
        raise  # an OOM row, as for any component
    except Exception as exc:
        if "out of memory" in str(exc).lower():
            raise
        raise UserCodeError(f"the factory raised {_first_line(exc)} (at {user_frame(exc.__traceback__, path)}: "
                            "the user's code, not effprof's)") from None


def _params_of(factory, name: str) -> tuple[list[Param], set[str], bool]:
    """(params, required names, takes ctx) from the factory's signature."""
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    params, required, takes_ctx = [], set(), False
    for p in inspect.signature(factory).parameters.values():
        if p.name == "ctx":
            takes_ctx = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        kind, optional = hints.get(p.name), False
        if typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            optional = len(args) < len(typing.get_args(kind))
            kind = args[0] if len(args) == 1 else None
        has_default = p.default is not inspect.Parameter.empty
        if kind not in _TYPES and has_default and type(p.default) in _TYPES:
            kind = type(p.default)
        if kind not in _TYPES:
            raise UsageError(f"{name}: argument {p.name!r} needs a type int, float, str or bool (annotation or "
                             "default) to become an option")
        default = p.default if has_default else None
        if not has_default:
            required.add(p.name)
        params.append(Param(p.name, kind, default, f"{getattr(factory, '__name__', 'factory')} argument",
                            optional=optional or not has_default or default is None))
    return params, required, takes_ctx


def _file_component(name: str):
    factory, path = _load_function(name)
    params, required, takes_ctx = _params_of(factory, name)
    own = {p.name for p in params}
    extra = [p for p in (INPUT_SHAPE, UNIT) if p.name not in own]

    def build(ctx, **values):
        missing = sorted(k for k in required if values.get(k) is None)
        if missing:
            raise UsageError(f"{name}: --{missing[0].replace('_', '-')} is required")
        shape = values.pop("input_shape", None) if "input_shape" not in own else values.get("input_shape")
        unit = values.pop("unit", "img") if "unit" not in own else "img"
        result = call_factory(factory, name, path, ctx, **values) if takes_ctx else \
            call_factory(factory, name, path, **values)
        return to_built(result, ctx, shape, unit, name)

    doc = (inspect.getdoc(factory) or "").strip().splitlines()
    return Component(name, build, tuple(params + extra), "img", doc[0] if doc else f"factory in a file", "file")


def parse_shape(text: str | None, name: str) -> tuple[int, ...]:
    if not text:
        raise UsageError(f"{name} returns an nn.Module: give its input shape at batch 1, e.g. --input-shape 1x3x224x224")
    try:
        shape = tuple(int(x) for x in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise UsageError(f"--input-shape: {text!r} is not a shape like 1x3x224x224") from None
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape: {text!r} needs positive dimensions")
    return shape


def _move(value, ctx):
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(ctx.device, ctx.dtype) if value.is_floating_point() else value.to(ctx.device)
    return value


def to_built(result: Any, ctx, shape_text: str | None, unit: str, name: str):
    """A factory's result (Built, (module, make_inputs) or nn.Module) as a Built on ctx's device and dtype."""
    import torch

    if isinstance(result, Built):
        return result
    if inspect.iscoroutine(result) or inspect.isgenerator(result):
        result.close()  # never run: closing it keeps Python's "never awaited" warning away
        raise UsageError(f"{name} returned a {type(result).__name__}; a factory returns a module directly "
                         "(not async, not a generator)")
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module) and callable(result[1]):
        module, make = result
        module = module.to(ctx.device, ctx.dtype)

        def make_inputs(batch: int) -> tuple:
            inputs = make(batch)
            inputs = inputs if isinstance(inputs, tuple) else (inputs,)
            return tuple(_move(x, ctx) for x in inputs)

        return Built(module, make_inputs, unit=unit)
    if isinstance(result, torch.nn.Module):
        shape = parse_shape(shape_text, name)
        module = result.to(ctx.device, ctx.dtype)

        def make_inputs(batch: int) -> tuple:
            return (torch.randn((batch * shape[0],) + shape[1:], device=ctx.device, dtype=ctx.dtype),)

        return Built(module, make_inputs, unit=unit, items_per_sample=shape[0], info={"input_shape": shape_text})
    raise UsageError(f"{name} returned {type(result).__name__}; expected an nn.Module, a (module, make_inputs) pair "
                     "or a Built")


# -- a Hugging Face model from the local cache ------------------------------------------------------------

def _hf_component(name: str):
    model_id = name[3:]
    if not model_id:
        raise UnknownComponent("hf: needs a model id, e.g. hf:openai-community/gpt2")
    params = (Param("seq_len", int, 128, "Tokens per sequence (models with a vocabulary).", low=1),
              INPUT_SHAPE, Param("pretrained", bool, False, "Load the cached weights instead of random ones."))

    def build(ctx, seq_len, input_shape, pretrained):
        return hf_built(model_id, ctx, seq_len, input_shape, pretrained)

    return Component(name, build, params, "tok", f"transformers AutoModel of {model_id} (local cache only)", "hf")


def hf_snapshot(model_id: str) -> Path:
    """The local folder of `model_id`: a directory as given, or its snapshot in the HF cache (no download)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, local_files_only=True, cache_dir=cache))
    except Exception:
        where = cache or "the default Hugging Face cache"
        raise PretrainedNotFound(f"hf:{model_id}: not in {where} (effprof never downloads; fetch it first, "
                                 f"e.g. `huggingface-cli download {model_id} config.json`)") from None


def hf_built(model_id: str, ctx, seq_len: int, input_shape: str | None, pretrained: bool):
    import torch
    from transformers import AutoConfig, AutoModel

    folder = hf_snapshot(model_id)
    try:
        with quiet_libraries():  # transformers' config warnings: shown with --debug only
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            if pretrained:
                model = AutoModel.from_pretrained(folder, local_files_only=True)
            else:
                model = AutoModel.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise PretrainedNotFound(f"hf:{model_id}: cannot build from {folder} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160]})") from None
    model = model.to(ctx.device, ctx.dtype).eval()
    vocab = getattr(config, "vocab_size", None)
    if input_shape is None and vocab:
        def make_inputs(batch: int) -> tuple:
            return (torch.randint(0, vocab, (batch, seq_len), device=ctx.device),)

        return Built(model, make_inputs, unit="tok", items_per_sample=seq_len,
                     forward=lambda m, inputs: m(input_ids=inputs[0]), info={"model_type": config.model_type})
    if input_shape is None:
        size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", 3)
        if not size:
            raise UsageError(f"hf:{model_id}: cannot tell this model's input; give --input-shape")
        size = size if isinstance(size, (tuple, list)) else (size, size)
        input_shape = "x".join(str(d) for d in (1, channels, *size))
    shape = parse_shape(input_shape, f"hf:{model_id}")

    def make_pixels(batch: int) -> tuple:
        return (torch.randn((batch * shape[0],) + shape[1:], device=ctx.device, dtype=ctx.dtype),)

    return Built(model, make_pixels, unit="img", items_per_sample=shape[0],
                 forward=lambda m, inputs: m(pixel_values=inputs[0]),
                 info={"model_type": config.model_type, "input_shape": input_shape})


register_external_source(external_component)
