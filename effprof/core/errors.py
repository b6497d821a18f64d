"""Error types. The CLI turns each into one line on stderr and a non-zero exit code."""


class EffprofError(Exception):
    """Base class of every error effprof reports to a user."""

    exit_code = 1


class UsageError(EffprofError):
    """Bad input from the user: an unknown name, a value out of range, a malformed grid."""

    exit_code = 2


class ParamError(UsageError):
    """A component parameter was given a value it does not accept."""


class UnknownComponent(UsageError):
    """No component is registered under the requested name."""


class ProfileError(UsageError):
    """A YAML profile could not be read or does not validate."""


class PretrainedNotFound(UsageError):
    """`--pretrained` names a checkpoint that is not on disk or in the cache."""


class BackendUnavailable(UsageError):
    """An explicitly requested implementation (kernel, extra) is not importable here."""


class MissingExtra(UsageError):
    """An optional dependency group is needed for this feature but is not installed."""


class CheckpointError(PretrainedNotFound):
    """A `--pretrained` file exists but is not a checkpoint effprof can read (corrupt, empty, pickled code,
    a config with missing keys or wrong types)."""


class PluginError(UsageError):
    """A module named in EFFPROF_PLUGINS failed to import or to register its components."""


class TooLarge(UsageError):
    """A configuration whose weights and inputs cannot fit in the device's memory: refused before allocating."""


class OutputError(EffprofError):
    """An output file could not be written once measuring had started (a full disk, /dev/full)."""


class StdoutClosed(EffprofError):
    """Standard output is closed, full or a broken pipe: effprof ends quietly with a non-zero exit."""


class UserCodeError(EffprofError):
    """A user's factory (`FILE.py:FUNCTION`) raised or called sys.exit() while building: its failure, not
    effprof's; the message names the file and line where it happened. The row fails (exit 1)."""
