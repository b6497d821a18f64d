import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Fast, quiet measurement settings for every CLI call the tests make.
FAST = ["--device", "cpu", "--min-time", "0.02", "--warmup", "0", "--max-cv", "1"]  # stop at min-time


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


def pytest_configure(config):
    os.environ.setdefault("EFFPROF_CACHE_DIR", str(config.rootpath / ".pytest_cache" / "effprof"))


def triton_tests_in_interpreter(test_file: str) -> int:
    """Run the `triton` tests of `test_file` in a subprocess with TRITON_INTERPRET=1 (triton reads it when first
    imported) and return how many passed; a failure fails the calling test with the subprocess's output."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    repo_root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(test_file)),
                           "-k", "triton and not subprocess"], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed, proc.stdout[-2000:]
    return int(passed.group(1))
