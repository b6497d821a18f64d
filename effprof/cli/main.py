"""The entry point: every command registered, every error one line on stderr and an exit code."""
from __future__ import annotations

import sys

import typer

import effprof.cli.app as shared
from effprof.cli.app import Interrupted, app, console, err_console  # noqa: F401  (Interrupted: re-exported)
# Importing a command module registers its commands, in the order `effprof --help` lists them.
from effprof.cli.commands import listing, run, compare, calibrate, roofline, breakdown, env  # noqa: F401,I001
from effprof.cli.commands import estimate, eval, quality, diff, columns  # noqa: F401,I001
from effprof.core.errors import EffprofError
from effprof.core.registry import get_component


# typer >= 0.20 vendors click as typer._click; older typer uses click itself. Take the exception classes
# from wherever typer's own BadParameter lives so that both work.
_click_errors = sys.modules[typer.BadParameter.__module__]
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_NoArgsIsHelp = getattr(_click_errors, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every error becomes one line on stderr and an exit code (README: Errors)."""
    from effprof.cli.terminal import guarded

    with guarded():
        return _main(argv)


HELP_FLAGS = ("-h", "--help")


def _component_help(argv: list[str]) -> str | None:
    """The component of `effprof run|breakdown COMPONENT ... --help`, else None."""
    if len(argv) < 2 or argv[0] not in ("run", "breakdown") or not any(a in HELP_FLAGS for a in argv[1:]):
        return None
    return next((a for a in argv[1:] if not a.startswith("-")), None)


def _main(argv: list[str] | None) -> int:
    import os
    import shlex

    from effprof.cli.terminal import EXIT_INTERRUPTED, silence_stdout, stdout_failure

    argv = list(sys.argv[1:] if argv is None else argv)
    shared.COMMAND_LINE = shlex.join(["effprof", *argv])
    command = typer.main.get_command(app)
    component = _component_help(argv)
    try:
        try:
            if component is not None:  # the command's options with their defaults, then the component's parameters
                from effprof.report.listing import params_table

                table = params_table(get_component(component))
                command.main(args=[argv[0], "--help"], prog_name="effprof", standalone_mode=False)
                console.print(table)
                return 0
            result = command.main(args=argv, prog_name="effprof", standalone_mode=False)
            sys.stdout.flush()
            return result if isinstance(result, int) else 0
        except typer.Abort as exc:  # click turns KeyboardInterrupt and any EOFError into Abort
            cause = exc.__context__
            if isinstance(cause, KeyboardInterrupt):
                raise cause from None
            if cause is not None and not isinstance(cause, EOFError):
                raise cause from None
            raise RuntimeError(f"unexpected end of input ({cause or 'abort'})") from None
    except typer.Exit as exc:
        return exc.exit_code
    except _NoArgsIsHelp as exc:
        console.print(exc.ctx.get_help() if exc.ctx else str(exc), highlight=False, markup=False)
        return 0
    except _UsageError as exc:
        message = " ".join(exc.format_message().split())
        err_console.print(f"effprof: error: {message}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except EffprofError as exc:
        err_console.print(f"effprof: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", EXIT_INTERRUPTED)
        err_console.print("effprof: interrupted" if code == EXIT_INTERRUPTED else "effprof: terminated",
                          highlight=False, markup=False)
        return code
    except Exception as exc:  # noqa: BLE001 - the last guard: one line, never a traceback
        code = stdout_failure(exc)
        if code is not None:
            silence_stdout()
            if not isinstance(exc, BrokenPipeError):
                err_console.print(f"effprof: error: cannot write to standard output ({exc.strerror or exc})",
                                  highlight=False, markup=False)
            return code
        if os.environ.get("EFFPROF_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        err_console.print(f"effprof: internal error: {type(exc).__name__}: {first} (a bug in effprof or a "
                          "plugin; EFFPROF_DEBUG=1 shows the traceback)", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INTERNAL


EXIT_INTERNAL = 3


def entry() -> None:
    code = main()
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        from effprof.cli.terminal import silence_stdout

        silence_stdout()
        code = code or 1
    sys.exit(code)


if __name__ == "__main__":
    entry()
