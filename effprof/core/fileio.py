"""File output, shared by every layer that writes files (records, plots, the calibration cache).

A regular file is written atomically: a temporary file beside it, then one rename, so a reader sees the
old file or the new one, never half of one. A destination that is not a regular file (a character device
such as /dev/null, a FIFO, a terminal) or a symbolic link is written through, never renamed over: effprof
does not replace a device, a link or a link's target with a new file (the target keeps its inode and mode,
as with a shell's `>`). New files get the mode any program would give them (0666 less the
umask, i.e. 0644 under the usual 022); a file that already exists keeps its mode.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from effprof.core.errors import OutputError, UsageError


def umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def expand(path: str | Path, option: str = "path") -> Path:
    """`~` and `~user` expanded; an unknown user or a NUL byte is a one-line UsageError."""
    text = str(path)
    if "\x00" in text:
        raise UsageError(f"{option} {text!r}: a path cannot hold a NUL byte")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser
        user = text[1:].split("/", 1)[0]
        raise UsageError(f"{option} {text}: no user named {user!r} to expand '~{user}'") from None


def is_stream(path: Path) -> bool:
    """True for a destination written through, never renamed over: a symbolic link (its target is written,
    the link and the target's inode stay) or an existing file that is not a regular one (device, FIFO)."""
    try:
        if os.path.islink(path):
            return True
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _fail(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {path}: {reason}")


@contextmanager
def atomic_path(path: str | Path, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success its contents reach `path` (see the module docstring).
    On failure the temporary file is removed and `path` is left as it was. OS errors become OutputError."""
    path = expand(path)
    if is_stream(path):
        with tempfile.TemporaryDirectory(prefix="effprof-") as folder:
            tmp = Path(folder) / "out"
            yield tmp
            try:
                with open(tmp, "rb") as src, open(path, "wb") as dst:  # write through, no rename
                    shutil.copyfileobj(src, dst)
            except OSError as exc:
                raise _fail(path, exc) from None
        return
    folder = path.parent
    try:
        if make_parents:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise UsageError(f"{path}: folder {folder} does not exist")
        # a short fixed prefix: a name near the file system's limit must still leave room for the suffix
        fd, tmp = tempfile.mkstemp(prefix=".effprof-", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise _fail(path, exc) from None
    try:
        yield Path(tmp)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o666 & ~umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _fail(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str, make_parents: bool = False) -> None:
    """Write `text` to `path` atomically (see `atomic_path`), flushed to disk before the rename."""
    with atomic_path(path, make_parents) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def read_utf8(path: Path) -> str:
    """The text of `path`; an unreadable or non-UTF-8 file raises ValueError whose message completes the file's
    name in one line ("cannot be read (...)" or "is not UTF-8 text (byte 0x.. at offset N)")."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None


# Kernel pseudo-file systems: their "regular" files report size 0 and some never end (/proc/kcore is the
# machine's memory); none holds a user's data.
PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def check_readable(path: str | Path, option: str, limit: int | None = None) -> Path:
    """The path of an input file that can be read to its end: a regular file (a FIFO, a device such as
    /dev/zero or a terminal would block or never end), outside /proc, /sys and /dev, at most `limit` bytes.
    Each refusal is a one-line UsageError naming `option` and the file."""
    file = expand(path, option)
    shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:70]}...{str(path)[-40:]}"
    try:
        info = os.stat(file)
        real = os.path.realpath(file)
    except OSError as exc:
        raise UsageError(f"{option} {shown}".strip() + f": cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{option} {shown}".strip() + ": is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode) or \
            stat.S_ISBLK(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
        raise UsageError(f"{option} {shown}".strip() + f": is {kind}; name a regular file (it is read to its end)")
    if any(real == root or real.startswith(root + "/") for root in PSEUDO_ROOTS):
        raise UsageError(f"{option} {shown}".strip() + f": is a kernel pseudo-file ({real}), not a data file")
    if limit is not None and info.st_size > limit:
        raise UsageError(f"{option} {shown}".strip() + f": {info.st_size / 2**20:,.0f} MiB is more than effprof reads from such a "
                         f"file ({limit / 2**20:,.0f} MiB)")
    if not os.access(file, os.R_OK):
        raise UsageError(f"{option} {shown}".strip() + ": cannot read (permission denied)")
    return file


def read_bounded(path: str | Path, option: str, limit: int) -> bytes:
    """The bytes of a file checked by `check_readable`, read up to `limit` (a file that grew while read is
    refused rather than read on)."""
    file = check_readable(path, option, limit)
    try:
        with open(file, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"{option} {path}".strip() + f": cannot read ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise UsageError(f"{option} {path}".strip() + f": more than effprof reads from such a file ({limit / 2**20:,.0f} MiB)")
    return data
