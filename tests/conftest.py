import os

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


def pytest_configure(config):
    os.environ.setdefault("EFFPROF_CACHE_DIR", str(config.rootpath / ".pytest_cache" / "effprof"))
