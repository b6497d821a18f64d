"""Every reducer under CUDA graphs: a reducer whose token count is fixed by its parameters must never make the
host wait for the device, so that its stage can be captured; PruMerge (a data-dependent count) declares its
`reduce` stage `host_sync` and is the only one exempt.

On the CPU, each stage of a tiny LLaVA / CLIP tower with each reducer runs under `HostSyncGuard`, which
records every operation that would read a value back on the host on a GPU (a count, a boolean, a list):
aten ops by name (nonzero, item, masked_select, unique, ...), indexing with a boolean mask, repeat_interleave
without its output size, copies to the CPU, and the Python-level reads (`.item()`, `.tolist()`, `bool(t)`,
`int(t)`, ...). On a GPU (skipped without CUDA), each fixed-count reducer's stages are captured in CUDA graphs
and replayed on new inputs, and the replay must equal the eager call on the same inputs.
"""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from effprof.core.reducers import get_reducer, list_reducers
from effprof.core.registry import BuildContext, create

aten = torch.ops.aten

# aten ops whose output size or value the host must read (on CUDA: a device-to-host copy and a synchronisation)
FORBIDDEN_OPS = {aten.nonzero, aten.argwhere, aten._local_scalar_dense, aten.item, aten.masked_select,
                 aten.unique_dim, aten._unique, aten._unique2, aten.unique_consecutive, aten.unique_dim_consecutive,
                 aten.equal, aten.is_nonzero, aten.allclose, aten.bincount}
INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
# Tensor methods that hand a value to Python (a read back from the device for a CUDA tensor)
FORBIDDEN_METHODS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
                     torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class _DispatchGuard(TorchDispatchMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in FORBIDDEN_OPS:
            self.found.append(str(func))
        elif packet in INDEXING_OPS and _bool_index(args[1] if len(args) > 1 else kwargs.get("indices")):
            self.found.append(f"{func} with a boolean mask")
        elif packet is aten.repeat_interleave and func is not aten.repeat_interleave.self_int \
                and kwargs.get("output_size") is None:
            self.found.append(f"{func} without output_size")
        elif packet in (aten._to_copy, aten.to) and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "cpu" and args[0].device.type != "cpu":
            self.found.append(f"{func} to the CPU")
        return func(*args, **kwargs)


class _FunctionGuard(TorchFunctionMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in FORBIDDEN_METHODS:
            self.found.append(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class HostSyncGuard:
    """`with HostSyncGuard() as found:` runs the block and lists in `found` every host-synchronising call."""

    def __enter__(self) -> list[str]:
        self.found: list[str] = []
        self._modes = [_FunctionGuard(self.found), _DispatchGuard(self.found)]
        for mode in self._modes:
            mode.__enter__()
        return self.found

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        return False


def test_the_guard_sees_every_kind_of_host_read():
    x = torch.randn(4, 3)
    mask = x[:, 0] > 0
    cases = {"bool mask": lambda: x[mask], "nonzero": lambda: mask.nonzero(), "item": lambda: x.sum().item(),
             "tolist": lambda: x.tolist(), "unique": lambda: torch.unique(x), "masked_select": lambda: x.masked_select(x > 0),
             "repeat_interleave": lambda: x.repeat_interleave(torch.tensor([1, 2, 1, 0]), dim=0),
             "int": lambda: int(mask.sum()), "if": lambda: 1 if mask.any() else 0, "where(c)": lambda: torch.where(mask),
             "bool index_put": lambda: x.clone().index_put_((mask,), torch.tensor(0.0)),
             "a read inside an op": lambda: torch.nn.functional.one_hot(torch.tensor([0, 2]))}
    for name, case in cases.items():
        with torch.no_grad(), HostSyncGuard() as found:
            case()
        assert found, name
    fine = [lambda: x.topk(2, dim=0).indices, lambda: x.gather(0, torch.zeros(1, 3, dtype=torch.long)),
            lambda: x.sort(dim=1, stable=True), lambda: x.repeat_interleave(2, dim=0),
            lambda: x.masked_fill(x > 0, 0.0), lambda: x[:, torch.tensor([0, 2])], lambda: x[1:3]]
    for case in fine:
        with torch.no_grad(), HostSyncGuard() as found:
            case()
        assert not found, found


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP vision checkpoint (width 32, 4 heads, 4 layers, 32 px, patch 8: 16 patches + class)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                              image_size=32, patch_size=8, hidden_act="quick_gelu")
    folder = tmp_path_factory.mktemp("tiny-clip-capture")
    CLIPVisionModel(config).save_pretrained(folder)
    return str(folder)


# every registered reducer at parameters that fit the tiny models (16 image tokens, a 2-layer LM)
FIT = {"visionzip": {"dominant": 5, "contextual": 3}, "tome": {"r": 2}, "fastv": {"fastv_k": 1},
       "pyramiddrop": {"pdrop_layers": "1"}, "sparsevlm": {"sparse_layers": "0"}}
VARIANTS = {"visionzip": [{"contextual_merge": "mean"}], "sparsevlm": [{"sparse_version": "v2"}],
            "prumerge": [{"merge": "loop"}]}
HOST_SYNC = {"prumerge", "prumerge+"}   # a data-dependent token count: the reduce stage runs eagerly


def reducer_rows(sites=("vision-output", "vision-inner", "lm")):
    rows = []
    for reducer in list_reducers(sites=sites):
        for variant in [{}] + VARIANTS.get(reducer.name, []):
            rows.append(pytest.param(reducer.name, {**FIT.get(reducer.name, {}), **variant},
                                     id="-".join([reducer.name, *map(str, variant.values())])))
    return rows


def _guarded_stages(built, inputs) -> dict[str, list[str]]:
    """Warm up once (a per-shape layout read happens there, as in the warm-up before a capture), then run
    every stage under the guard, the declared host_sync ones too: {stage: host reads found}. Under no_grad,
    not inference_mode: in inference mode the dispatch mode does not see the reads that ATen's own C++
    makes inside an op (one_hot's and quantile's range checks)."""
    with torch.no_grad():
        built.call(inputs)
        carry, found = inputs, {}
        for stage in built.stages:
            with HostSyncGuard() as found[stage.name]:
                carry = stage.run(carry)
    return found


def _check(name: str, built, found: dict[str, list[str]]):
    declared = {s.name for s in built.stages if s.host_sync}
    assert declared == ({"reduce"} if name in HOST_SYNC else set()), declared
    for stage, reads in found.items():
        if stage in declared:
            assert reads, f"{name}: stage {stage} is declared host_sync but reads nothing back"
        else:
            assert not reads, f"{name}: stage {stage} reads back on the host: {sorted(set(reads))}"


@pytest.mark.parametrize("name, params", reducer_rows())
def test_no_reducer_stage_reads_back_on_the_host_in_a_tiny_llava(name, params):
    ctx = BuildContext(torch.device("cpu"), torch.float32, 0)
    built = create("llava", ctx, preset="tiny", prompt_tokens=6, reducer=name, **params)
    torch.manual_seed(0)
    _check(name, built, _guarded_stages(built, built.make_inputs(2)))


@pytest.mark.parametrize("name, params", reducer_rows(("vision-output", "vision-inner")))
def test_no_reducer_stage_reads_back_on_the_host_in_a_clip_tower(name, params, tiny_clip):
    ctx = BuildContext(torch.device("cpu"), torch.float32, 0)
    built = create("clip-vision", ctx, pretrained=tiny_clip, reducer=name, **params)
    torch.manual_seed(0)
    _check(name, built, _guarded_stages(built, built.make_inputs(2)))


def test_clip_vtp_reads_nothing_back(tiny_clip):
    """`clip-vtp` (the patch-norm pruning before the encoder, one call without stages) under the guard."""
    built = create("clip-vtp", BuildContext(torch.device("cpu"), torch.float32, 0), pretrained=tiny_clip, keep=0.5)
    inputs = built.make_inputs(2)
    with torch.no_grad():
        built.call(inputs)
        with HostSyncGuard() as found:
            out = built.call(inputs)
    assert out.shape == (2, 32) and not found, found


# --- on a GPU: capture and replay ------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
SITE_STAGE = {"vision-output": "reduce", "vision-inner": "vision", "lm": "prefill"}   # where a reducer's work runs


def _replayed_equals_eager(built, make_inputs, reducer_stage: str):
    """Capture on inputs A, copy inputs B into the captured inputs, replay, and compare with the eager call
    on B. As `--graphs` runs it: the whole call as one graph and, separately, one graph per stage fed by the
    previous stage's graph (the stage split); with a host_sync stage, a graph per stage keyed by shapes and
    that stage eager (effprof.measure.modes.graphed_stages). In the eager call on B the stage where the
    reducer acts (`reducer_stage`, unless host_sync) runs under torch.cuda's sync debug mode set to error (the
    other stages are transformers' own, whose eager checks may read back where a capture skips them)."""
    from effprof.measure.modes import graphed_callable, graphed_stages

    device = torch.device("cuda")
    eager_names = {s.name for s in built.stages if s.host_sync}
    static, fresh = make_inputs(), make_inputs()
    replays = []
    with torch.inference_mode():
        if eager_names:
            staged = graphed_stages(built.stages, device, eager_names)
            replays.append(lambda: _run(staged, static))
        else:
            replays.append(graphed_callable(built.call, static, device))
            chain, carry = [], static
            for stage in built.stages:
                replay = graphed_callable(lambda s=stage, x=carry: s.run(x), None, device)
                carry = replay()
                chain.append(replay)
            replays.append(lambda: [replay() for replay in chain][-1])
        for replay in replays:
            replay()                                            # captured (and replayed once) on A
        for dst, src in zip(static, fresh):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        replayed = [[t.clone() for t in _tensors(replay())] for replay in replays]
        _run(built.stages, static)                              # warm, then the eager call on B
        torch.cuda.synchronize()
        carry = static
        for stage in built.stages:   # the reducer's own stage with any synchronisation an error
            strict = stage.name == reducer_stage and not stage.host_sync
            torch.cuda.set_sync_debug_mode("error" if strict else "default")
            try:
                carry = stage.run(carry)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        expected = _tensors(carry)
    assert expected and torch.equal(static[0], fresh[0])
    for got in replayed:
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _run(stages, inputs):
    carry = inputs
    for stage in stages:
        carry = stage.run(carry)
    return carry


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    return []


@needs_cuda
@pytest.mark.parametrize("name, params", reducer_rows())
def test_every_reducer_captures_in_cuda_graphs_and_replays_the_eager_result(name, params):
    ctx = BuildContext(torch.device("cuda"), torch.float32, 0)
    built = create("llava", ctx, preset="tiny", prompt_tokens=6, reducer=name, **params)
    torch.manual_seed(0)
    _replayed_equals_eager(built, lambda: built.make_inputs(2), SITE_STAGE[get_reducer(name).where])


@needs_cuda
@pytest.mark.parametrize("name, params", reducer_rows(("vision-output", "vision-inner")))
def test_every_vision_reducer_captures_in_a_clip_tower(name, params, tiny_clip):
    ctx = BuildContext(torch.device("cuda"), torch.float32, 0)
    built = create("clip-vision", ctx, pretrained=tiny_clip, reducer=name, **params)
    torch.manual_seed(0)
    _replayed_equals_eager(built, lambda: built.make_inputs(2), SITE_STAGE[get_reducer(name).where])
