import os

import pytest

# Fast, quiet measurement settings for every CLI call the tests make.
FAST = ["--device", "cpu", "--min-time", "0.02", "--warmup", "0"]


@pytest.fixture
def fast():
    return list(FAST)


def pytest_configure(config):
    os.environ.setdefault("EFFPROF_CACHE_DIR", str(config.rootpath / ".pytest_cache" / "effprof"))
