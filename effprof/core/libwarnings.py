"""Library warnings while a component is built or a checkpoint loaded (transformers' config checks, torch's
loading notes, a user module's own warnings) are not effprof's to print: without `--debug` they are
silenced inside `quiet_libraries()`, so that a refusal stays one line; with `--debug` they print as usual.

Two channels are covered: Python's `warnings` (torch, numpy, user code) and transformers' logger, which
prints through its own handler (configured when transformers is first imported: `TRANSFORMERS_VERBOSITY`
is set for the block so that an import inside it starts quiet too).
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator


_SHOWING = [False]  # the innermost block's choice: a nested block without `show` inherits it


def debugging() -> bool:
    return bool(os.environ.get("EFFPROF_DEBUG"))


@contextmanager
def quiet_libraries(show: bool | None = None) -> Iterator[None]:
    """Silence library warnings inside the block unless `show` (--debug) or EFFPROF_DEBUG is set; `show`
    None keeps the enclosing block's choice (a loader inside a build shows what the build shows)."""
    show = _SHOWING[-1] if show is None else show
    if show or debugging():
        _SHOWING.append(True)
        try:
            yield
        finally:
            _SHOWING.pop()
        return
    _SHOWING.append(False)
    try:
        with _silenced():
            yield
    finally:
        _SHOWING.pop()


@contextmanager
def _silenced() -> Iterator[None]:
    had_transformers = "transformers" in sys.modules
    saved_env = os.environ.get("TRANSFORMERS_VERBOSITY")
    hf_logging, level = None, None
    if had_transformers:
        try:
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
        except Exception:  # noqa: BLE001 - an unusual transformers: its warnings may print
            hf_logging = None
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if saved_env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = saved_env
        if hf_logging is not None and level is not None:
            hf_logging.set_verbosity(level)
        elif not had_transformers and "transformers" in sys.modules:
            _restore_first_import_level(saved_env)


def _restore_first_import_level(saved_env: str | None) -> None:
    """Imported inside the block, transformers read TRANSFORMERS_VERBOSITY=error once: set the level it would
    have had outside (the user's variable, else transformers' default, warning), so that a later `--debug`
    run in this process shows its warnings."""
    try:
        from transformers.utils import logging as hf_logging

        levels = getattr(hf_logging, "log_levels", {})
        hf_logging.set_verbosity(levels.get(saved_env or "warning", hf_logging.WARNING))
    except Exception:  # noqa: BLE001 - an unusual transformers: it keeps the level it has
        pass
