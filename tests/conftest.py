import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from effprof.ops.selective_scan import available_backends

# Fast, quiet measurement settings for every CLI call the tests make.
FAST = ["--device", "cpu", "--min-time", "0.02", "--warmup", "0", "--max-cv", "1"]  # stop at min-time


HAS_TRITON = importlib.util.find_spec("triton") is not None
# triton reads TRITON_INTERPRET when first imported: a file's `triton` tests run in the one child pytest that sets it
# (`triton_interpreter`, below), or directly when the suite itself starts with it
INTERPRETED = HAS_TRITON and "triton" in available_backends(torch.device("cpu"))
runs_interpreter_child = pytest.mark.skipif(not HAS_TRITON or INTERPRETED,
                                            reason="triton missing, or the triton tests run directly")
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 at start "
                                       "(run by the file's test_triton_tests_in_interpreter_subprocess)")

@pytest.fixture
def fast():
    return list(FAST)


@pytest.fixture
def linear_applied_twice():
    """Factory: a module that applies one shared nn.Linear(width, width) twice (a module called twice)."""
    import torch

    def make(width: int) -> torch.nn.Module:
        class Twice(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(width, width)

            def forward(self, x):
                return self.lin(self.lin(x))

        return Twice()

    return make


def op_recorder():
    """A TorchDispatchMode that lets every op run and records it: `.seen`, the ops' names; `.calls`, each call's
    op and the data pointers of its tensor arguments."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class OpRecorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: set[str] = set()
            self.calls: list[tuple] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            self.seen.add(func.overloadpacket.__name__)
            self.calls.append((func, [a.data_ptr() for a in tree_flatten((args, kwargs))[0]
                                      if isinstance(a, torch.Tensor) and a.device.type != "meta"]))
            return func(*args, **kwargs)

    return OpRecorder()


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run the tests marked slow (CI does not: a cheaper test of each one's feature runs)")


def pytest_configure(config):
    os.environ.setdefault("EFFPROF_CACHE_DIR", str(config.rootpath / ".pytest_cache" / "effprof"))


SLOW_REASON = "slow: run with --run-slow"


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason=SLOW_REASON)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture
def run_slow(request) -> bool:
    """Whether this session runs the slow tests (--run-slow): for a budget that grows with it."""
    return request.config.getoption("--run-slow")


@pytest.fixture(scope="session")
def triton_interpreter(request, tmp_path_factory):
    """`passed(test_file)`: how many `triton` tests of `test_file` passed in a child pytest with TRITON_INTERPRET=1
    (triton reads it when first imported), counting those marked slow that this session leaves out (the child
    runs them with --run-slow); a failure among them fails the caller with its report.

    One child runs the `triton` tests of every file of this session that asks for this fixture, on first use: one
    Python start, torch import and collection for all of them rather than one per file."""
    files = sorted({str(item.path) for item in request.session.items
                    if "triton_interpreter" in getattr(item, "fixturenames", ())})
    report = tmp_path_factory.mktemp("interpreter") / "junit.xml"
    env = dict(os.environ, TRITON_INTERPRET="1")
    repo_root = Path(__file__).resolve().parents[1]
    slow = ["--run-slow"] if request.config.getoption("--run-slow") else []
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *slow,
                           "-k", "triton and not subprocess", "-o", "junit_family=xunit1", f"--junitxml={report}"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout[-4000:] + proc.stderr[-2000:]
    # 0: all passed, 1: some failed (told per file below); anything else (a collection error...) fails every file
    cases = list(ElementTree.parse(report).getroot().iter("testcase")) if proc.returncode in (0, 1) else []

    def passed(test_file: str) -> int:
        mine = [case for case in cases if Path(case.get("file") or "").name == Path(test_file).name]
        if not mine:
            pytest.fail(f"no `triton` test of {Path(test_file).name} ran in the interpreter:\n{output}", pytrace=False)
        failures = [(case.get("name"), problem.text or problem.get("message") or "") for case in mine
                    for problem in (case.find("failure"), case.find("error")) if problem is not None]
        if failures:
            pytest.fail("\n\n".join(f"{name} (TRITON_INTERPRET=1):\n{text[-3000:]}" for name, text in failures),
                        pytrace=False)
        left_to_run_slow = [case for case in mine if case.find("skipped") is not None
                            and SLOW_REASON in (case.find("skipped").get("message") or "")]
        return sum(case.find("skipped") is None for case in mine) + len(left_to_run_slow)

    return passed
