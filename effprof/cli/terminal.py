"""The terminal effprof talks to: an encoding that cannot show every character, a standard output that is
closed, full or a broken pipe, and SIGTERM, which ends a run as Ctrl-C does.

- Characters the output encoding lacks (`PYTHONIOENCODING=ascii`: ×, μ, σ, ², →) are written as plain
  ASCII (x, u, sigma, ^2, ->) instead of ending in UnicodeEncodeError.
- SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so the same handlers that keep a
  comparison's finished rows on Ctrl-C run; the exit code is 143 (128 + 15) instead of 130.
- A write to a closed or full standard output raises OSError at the print; `stdout_failure` says whether
  an exception was that, so the CLI ends quietly (one line on stderr, none for a broken pipe).
"""
from __future__ import annotations

import codecs
import errno
import io
import os
import signal
import sys
import threading
import unicodedata
from contextlib import contextmanager
from typing import Iterator

PLAIN = {"×": "x", "·": "*", "μ": "u", "µ": "u", "σ": "sigma", "α": "alpha", "β": "beta", "Δ": "Delta",
         "²": "^2", "³": "^3", "≤": "<=", "≥": ">=", "≈": "~", "→": "->", "←": "<-", "…": "...", "—": "--",
         "–": "-", "−": "-", "±": "+/-", "√": "sqrt", "∞": "inf", "⌈": "ceil(", "⌉": ")", "‖": "||"}
ERROR_HANDLER = "effprof-plain"
EXIT_INTERRUPTED = 130   # 128 + SIGINT
EXIT_TERMINATED = 143    # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, what a shell reports for `effprof list | head -1`


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that finished rows are kept."""

    exit_code = EXIT_TERMINATED


def _plain(error: UnicodeError):
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = []
    for char in error.object[error.start:error.end]:
        text = PLAIN.get(char)
        if text is None:
            text = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode("ascii") or "?"
        out.append(text)
    return "".join(out), error.end


codecs.register_error(ERROR_HANDLER, _plain)


def plain_fallback(stream) -> None:
    """Make `stream` write characters its encoding lacks as plain ASCII (a no-op for UTF-8 streams)."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        "×μσ²→≤…".encode(encoding)
        return
    except (UnicodeEncodeError, LookupError):
        pass
    if isinstance(stream, io.TextIOWrapper):
        try:
            stream.reconfigure(errors=ERROR_HANDLER)
        except (ValueError, OSError):  # closed
            pass


class _ClosedStdout(io.TextIOBase):
    """Stands in for a standard output that was closed before effprof started (`effprof list >&-`)."""

    encoding = "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed")


class _WatchedStdout:
    """Standard output as it was, remembering the OSError of a failed write or flush: an OSError is then
    known to be standard output's (full, closed, a broken pipe) and not a file's."""

    def __init__(self, stream):
        self._stream = stream
        self.failed: OSError | None = None

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as exc:
            self.failed = exc
            raise

    def flush(self):
        try:
            return self._stream.flush()
        except OSError as exc:
            self.failed = exc
            raise

    def __getattr__(self, name):
        return getattr(self._stream, name)


def stdout_failure(exc: BaseException) -> int | None:
    """The exit code when `exc` is a failed write to standard output, else None."""
    stream = sys.stdout
    failed = getattr(stream, "failed", None) if isinstance(stream, _WatchedStdout) else None
    if failed is None or not isinstance(exc, OSError):
        return None
    return EXIT_BROKEN_PIPE if isinstance(exc, BrokenPipeError) else 1


def silence_stdout() -> None:
    """After standard output failed: point it at /dev/null so the interpreter's final flush stays quiet."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


@contextmanager
def guarded() -> Iterator[None]:
    """Around one CLI invocation: plain-ASCII fallback, a stand-in for a closed stdout, SIGTERM as Ctrl-C."""
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    for stream in (sys.stdout, sys.stderr):
        plain_fallback(stream)
    original = sys.stdout
    watched = sys.stdout = _WatchedStdout(original)
    previous = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        def on_term(signum, frame):
            raise Terminated()

        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if sys.stdout is watched:
            sys.stdout = original
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
