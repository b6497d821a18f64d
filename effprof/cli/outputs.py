"""Output paths (`--csv`, `--json`, `--plot`): everything that can be checked before any time is spent
measuring, each refusal one line naming the option.

Refused: an empty path; `~user` for an unknown user; a directory; a path under a missing folder (the
folder named); a folder effprof cannot create a file in (read-only, /proc, permissions: found by creating
and removing a probe file, which is what the real write will do); a file name longer than the file system
allows; an existing file that is not writable; a link to nothing; two options naming the same file.
`-` is standard output (CSV and JSON only). A plot is a PNG: `--plot` must name a `.png` file. Destinations that are not regular files (/dev/null, a FIFO, a
symbolic link) are written through once at the end, never renamed over (see `effprof.core.fileio`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from effprof.core.errors import UsageError
from effprof.core.fileio import expand, is_stream

STDOUT = "-"
TEXT_OPTIONS = ("--csv", "--json")  # those that may be "-"
IMAGE_OPTIONS = ("--plot",)          # written as PNG: a file named for another format is refused
IMAGE_SUFFIXES = (".png",)


def name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output(option: str, given: str) -> str:
    """Validate one output path; return it with `~` expanded ("-" stays "-")."""
    if given is None:
        return None
    if not given.strip():
        raise UsageError(f"{option}: the path is empty (name a file, or '-' for standard output)")
    if given == STDOUT:
        if option not in TEXT_OPTIONS:
            raise UsageError(f"{option}: '-' (standard output) is for --csv and --json only; name a file")
        return STDOUT
    path = expand(given, option)
    given = given if len(given) <= 120 else f"{given[:70]}...{given[-40:]}"  # as shown in messages
    try:
        limit = name_max(path.absolute().parent if path.absolute().parent.is_dir() else Path("/"))
    except OSError:  # the folder's own path is too long: the probe below says so
        limit = 255
    if len(path.name.encode("utf-8", "surrogateescape")) > limit:
        raise UsageError(f"{option}: a file name of {len(path.name)} characters is longer than this file "
                         f"system allows ({limit} bytes)")
    try:
        if path.is_dir():
            raise UsageError(f"{option} {given}: is a directory (name a file in it)")
        if os.path.lexists(path) and not path.exists():
            raise UsageError(f"{option} {given}: is a link to {os.readlink(path)}, which does not exist")
        if option in IMAGE_OPTIONS and not is_stream(path) and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise UsageError(f"{option} {given}: effprof draws PNG images; name a .png file"
                             + (f" (not {path.suffix})" if path.suffix else ""))
        if is_stream(path):  # a device, a FIFO or a link: written through (effprof.core.fileio)
            if not os.access(path, os.W_OK):
                raise UsageError(f"{option} {given}: not writable")
            return str(path)
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"{option} {given}: the file exists and is not writable")
        folder = path.absolute().parent
        if not folder.is_dir():
            missing = folder
            while not missing.parent.is_dir() and missing.parent != missing:
                missing = missing.parent
            what = "does not exist" if not missing.exists() else "is not a folder"
            raise UsageError(f"{option} {given}: folder {missing} {what}")
        probe = tempfile.mkstemp(prefix=".effprof-", suffix=".tmp", dir=folder)
        os.close(probe[0])
        os.unlink(probe[1])
    except OSError as exc:
        raise UsageError(f"{option} {given}: cannot write there ({exc.strerror or exc})") from None
    return str(path)


def check_outputs(**options: str | None) -> tuple[str | None, ...]:
    """Validate `csv=..., json=..., plot=...` (None = not given) before measuring; return the expanded
    paths in the order given. Two options naming the same file are refused."""
    checked = {f"--{name}": check_output(f"--{name}", value) for name, value in options.items()}
    seen: dict[str, str] = {}
    for option, path in checked.items():
        if path is None:
            continue
        key = path if path == STDOUT else os.path.realpath(path)
        if key in seen:
            what = "standard output" if path == STDOUT else key
            raise UsageError(f"{seen[key]} and {option} name the same file ({what}); give each its own")
        seen[key] = option
    return tuple(checked.values())


def to_stdout(*paths: str | None) -> bool:
    """True when one of the outputs is standard output (the table then goes to standard error)."""
    return STDOUT in paths
