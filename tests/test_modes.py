"""Execution modes on CPU: CUDA graphs refuse cleanly; compile time is the first call's."""
import pytest
import torch

from effprof.errors import EffprofError
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
