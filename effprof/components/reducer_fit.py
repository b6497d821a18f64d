"""How a token reducer meets the LLaVA it is attached to (`effprof.components.vlm`): layer parameters that
default to a 32-layer LM scaled to a shallower one, and a vision-output reducer counted on --device meta
at the token count it declares. Imports no torch until a reducer is attached."""
from __future__ import annotations


# The LM reducers' layer parameters default to their papers' settings for LLaVA-1.5-7B's 32 layers. Left at
# their defaults on a shallower LM (the `tiny` preset's 2 layers) they are scaled to its depth, and the record
# says so (`reducer_fitted`); a value the user gave that does not fit is refused with the range that does.
PAPER_LM_LAYERS = 32
LM_REDUCER_LAYERS = {"fastv": ("fastv_k", "k", 1), "pyramiddrop": ("pdrop_layers", "layers", 1),
                     "sparsevlm": ("sparse_layers", "layers", 0)}  # reducer: (option, attribute, lowest layer)


def fit_lm_reducer(reducer, num_layers: int, image_tokens: int) -> str | None:
    """Check an LM reducer's schedule against an LM of `num_layers`; scale layer parameters left at their
    defaults to it. Returns what was scaled (None if nothing), or raises a ParamError that says how to fit."""
    from effprof.core.errors import ParamError
    from effprof.core.reducers import get_reducer

    name = reducer.reducer_name
    try:
        reducer.stages(image_tokens, num_layers)
        return None
    except ValueError as exc:
        problem = str(exc)
    if name not in LM_REDUCER_LAYERS:
        raise ParamError(f"--reducer {name}: {problem}")
    option, attribute, lowest = LM_REDUCER_LAYERS[name]
    flag = "--" + option.replace("_", "-")
    if num_layers <= lowest:
        raise ParamError(f"--reducer {name}: {problem}; this LM is too shallow for {name}")
    value = getattr(reducer, attribute)
    default = next(p.default for p in get_reducer(name).params if p.name == option)
    scaled = sorted({min(num_layers - 1, max(lowest, layer * num_layers // PAPER_LM_LAYERS))
                     for layer in (value if isinstance(value, tuple) else (value,))})
    fits = scaled[-1] if isinstance(value, int) else tuple(scaled)
    shown = fits if isinstance(fits, int) else ",".join(map(str, fits))
    as_default = value if isinstance(value, int) else ",".join(map(str, value))
    if str(as_default) != str(default):  # the user's own value: say what fits, change nothing
        raise ParamError(f"--reducer {name}: {problem}; give {flag} below {num_layers} (e.g. {flag} {shown})")
    setattr(reducer, attribute, fits)
    reducer.stages(image_tokens, num_layers)  # the scaled schedule fits (raises if not: a bug here)
    return (f"{option} {as_default} -> {shown} (the default, set for a {PAPER_LM_LAYERS}-layer LM, scaled to this "
            f"LM's {num_layers} layers)")


def count_by_declared_tokens(pipe, reducer, tokens_per_image: int, images: int) -> tuple[str, int] | None:
    """On --device meta a vision-output reducer whose selection reads values (VisionZip's top-k and masks)
    cannot run; one that declares its output count (`tokens_out`) is counted with that many tokens: the
    reducer's stage hands the first `tokens_out` tokens on, so the projector and the LM are counted at the
    reduced length, and the view the reducer reads (its q/k projections) is counted too; the reducer's own
    scoring and merging are not. Returns the record's note, or None (the row is then refused if it reads
    values: effprof.runner.NotCountableOnMeta)."""
    if reducer.where != "vision-output" or not hasattr(reducer, "tokens_out"):
        return None
    kept = int(reducer.tokens_out(tokens_per_image))
    if kept == tokens_per_image:  # a reducer that keeps everything runs on meta as it is
        return None

    from torch import nn

    class DeclaredCount(nn.Module):
        needs_qk = getattr(reducer, "needs_qk", False)

        def forward(self, vision):
            return vision.hidden[:, :kept]

    pipe.vision_reducer.reducer = DeclaredCount()
    return (f"meta: counted with the reducer's declared {kept} tokens per image (tokens_out); its own scoring "
            "and merging are not counted"), kept * images
