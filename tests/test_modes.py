"""Execution modes on CPU: CUDA graphs refuse cleanly; compile time is the first call's."""
import pytest
import torch

from effprof.core.errors import EffprofError
from effprof.measure.modes import CompileError, GraphCaptureError, compiled_module, graphed_callable


def test_graph_capture_refused_off_cuda():
    lin = torch.nn.Linear(4, 4)
    with pytest.raises(GraphCaptureError, match="need a CUDA device") as info:
        graphed_callable(lambda inputs: lin(*inputs), (torch.randn(2, 4),), torch.device("cpu"))
    assert isinstance(info.value, EffprofError) and "\n" not in str(info.value)


def test_compiled_module_times_its_first_call_and_matches_eager():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    calls = []

    def first(module):
        calls.append(1)
        return module(x)

    compiled, seconds = compiled_module(lin, first, torch.device("cpu"), backend="eager")
    assert calls == [1] and seconds > 0
    torch.testing.assert_close(compiled(x), lin(x))


def test_compile_failure_is_one_line():
    def fails(module):
        raise RuntimeError("no compiler\ndetails")

    with pytest.raises(CompileError, match="^torch.compile failed: RuntimeError: no compiler$"):
        compiled_module(torch.nn.Linear(2, 2), fails, backend="eager")


def test_graphed_stages_replay_per_shape_around_a_host_sync_stage(monkeypatch):
    """A stand-in for CUDA graphs (capture = remember the static inputs; replay = run on them): the stage
    after a host-sync stage captures once per shape it receives and reads the copied-in values."""
    import effprof.measure.modes as modes
    from effprof.core.registry import Stage

    captures = []

    def fake_graph(call, inputs, device):
        captures.append(tuple(x.shape for x in inputs if isinstance(x, torch.Tensor)))
        return lambda: call(inputs)

    monkeypatch.setattr(modes, "graphed_callable", fake_graph)
    cache = object()   # a non-tensor item (a KV cache) is part of the key by identity, never copied
    stages = [Stage("double", lambda c: (c[0] * 2, c[1])),
              Stage("keep", lambda c: (c[0][: int((c[0] > 0).sum())], c[1]), host_sync=True),  # data-dependent
              Stage("total", lambda c: (c[0].sum(), c[1]))]
    graphed = modes.graphed_stages(stages, torch.device("cuda"), eager={"keep"})
    assert [s.host_sync for s in graphed] == [False, True, False] and graphed[1] is stages[1]
    for values in ([1.0, 2.0, -1.0], [3.0, 1.0, 1.0], [5.0, 1.0, -2.0]):
        carry = (torch.tensor(values), cache)
        expected, got = carry, carry
        for eager_stage, graph_stage in zip(stages, graphed):
            expected, got = eager_stage.run(expected), graph_stage.run(got)
        assert float(got[0]) == float(expected[0]) and got[1] is cache
    # "double": one shape (3,) -> one capture; "total": shapes (2,), (3,), then (2,) again -> two captures
    assert sorted(captures) == [((2,),), ((3,),), ((3,),)]
