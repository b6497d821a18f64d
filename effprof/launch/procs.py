"""What every process effprof starts shares: its environment, and how its last words are read."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# NVLink SHARP / multicast off in every process effprof starts (the lent GPU machines require it).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@contextmanager
def child_env(extra: dict[str, str]) -> Iterator[None]:
    """Set variables for a child started inside the block (spawn copies os.environ), then restore."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def last_line(path: Path) -> str:
    """The last non-empty line a worker wrote (its error, when it died), at most 300 characters."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE")


@contextmanager
def crash_note(names: list[str]) -> Iterator[None]:
    """While the block runs rows of user code (`FILE.py:FUNCTION`) in this process, a crash of the interpreter
    (SIGSEGV, SIGBUS, SIGILL, SIGFPE: no Python exception can catch it) ends effprof with one line naming the
    rows and saying that `--isolate` contains such a crash, and the exit code 128 + signal, as a shell
    reports it. The handler is a C-level one (through ctypes): it writes with os.write and leaves with
    os._exit; the previous handlers come back after the block. Without ctypes or libc it does nothing."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None)
        install = libc.signal
        install.restype = ctypes.c_void_p
        install.argtypes = (ctypes.c_int, ctypes.c_void_p)
    except (OSError, AttributeError, ImportError):
        yield
        return
    rows = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    def on_crash(signum: int) -> None:  # runs in a signal handler: no allocation beyond the message
        os.write(2, (f"effprof: error: {rows}: the user code crashed the interpreter ({signal.Signals(signum).name}) "
                     "while building or measuring; --isolate runs such rows in a worker process, where a "
                     "crash fails only its row\n").encode())
        os._exit(128 + signum)

    handler = ctypes.CFUNCTYPE(None, ctypes.c_int)(on_crash)
    numbers = [getattr(signal, name) for name in CRASH_SIGNALS if hasattr(signal, name)]
    previous = {n: install(n, ctypes.cast(handler, ctypes.c_void_p)) for n in numbers}
    try:
        yield
    finally:
        for number, old in previous.items():
            install(number, old)
