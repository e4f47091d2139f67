"""The Typer app and the console entry point: run a command, map errors to exit codes.

Errors from the library are ``MconvError`` subclasses; they are printed as one
line on stderr with their exit code (0 ok, 1 conversion error, 2 usage or input
error, 3 verification failed). ``--debug`` anywhere on the line shows tracebacks;
``--verbose`` (or ``--debug``) lets third-party runtimes' own log lines through.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

app = typer.Typer(
    name="mconv",
    help="Convert PyTorch and ONNX models for deployment runtimes (`mconv targets` lists them), "
    "verified by the real runtimes.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

state: dict[str, Any] = {"debug": False}


# ---- entry point ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the app, map errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args or "--verbose" in args:
        # Third-party logs (onnxruntime, onnxsim, OpenVINO, ...) reach stderr only then.
        import os

        from mconv.quiet import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    if "--verbose" in args:
        args = [a for a in args if a != "--verbose"]
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        state["debug"] = True
    as_json = "--json" in args
    from mconv.fsutil import cleanup_temporaries

    try:
        command, args = _with_target_options(args)
        command.main(args=args, prog_name="mconv", standalone_mode=False)
        return 0
    except SystemExit as e:  # typer/click exits
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except KeyboardInterrupt:
        cleanup_temporaries()
        _fail("interrupted", 130, as_json)
        return 130
    except Exception as e:
        return _handle_error(e, as_json)


def _with_target_options(args: list[str]):
    """The click command for ``app``, and ``args`` with target flags as ``--option``.

    Target options come from the targets' declarations (:mod:`mconv.cli.targetopts`);
    targets are loaded only for the commands that take them.
    """
    from mconv.cli.targetopts import COMMANDS, help_epilog, rewrite_flags

    command = typer.main.get_command(app)
    if not args or args[0] not in COMMANDS:
        return command, args

    sub = command.commands[args[0]]
    if "--help" in args:
        sub.epilog = help_epilog()
    reserved = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
    return command, rewrite_flags(args, reserved)


def _handle_error(e: Exception, as_json: bool) -> int:
    """Print one line for ``e`` (the traceback too with --debug) and return its exit code."""
    from mconv.errors import MconvError
    from mconv.fsutil import cleanup_temporaries

    cleanup_temporaries()
    if state["debug"]:
        import traceback

        traceback.print_exception(e)
    if isinstance(e, MconvError):
        _fail(e.message, e.exit_code, as_json, e.report)
        return e.exit_code
    if isinstance(e, typer.Abort):
        _fail("aborted", 130, as_json)
        return 130
    cx = _click_exceptions()
    if type(e).__name__ == "NoArgsIsHelpError":
        sys.stderr.write(e.format_message() + "\n")
        return 2
    if isinstance(e, cx.UsageError):
        msg = e.format_message()
        if e.ctx is not None:
            msg = f"{msg} (see `{e.ctx.command_path} --help`)"
        _fail(msg, 2, as_json)
        return 2
    if isinstance(e, cx.ClickException):
        _fail(e.format_message(), 2, as_json)
        return 2
    full = _disk_full_message(e)
    if full:
        _fail(full, 1, as_json)
        return 1
    _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, and report it)", 1, as_json)
    return 1


def _disk_full_message(e: BaseException) -> str | None:
    """One line for a full disk or quota (``e`` or its cause), or None for other errors.

    A full disk is the user's environment, not a bug: the line says what to do (and where the
    write failed, when the OS names the file); partial files are already removed by
    ``cleanup_temporaries``.
    """
    import errno

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "no space left on the device" if e.errno == errno.ENOSPC else "disk quota exceeded"
            where = f" writing {e.filename}" if e.filename else ""
            return (
                f"{what}{where}: free some, or write to another disk with -o (temporary files go to "
                "TMPDIR); nothing was written"
            )
        e = e.__cause__ or e.__context__
    return None


def _click_exceptions():
    """The click that typer raises from: its vendored copy (typer >= 0.20) first, since a
    separately installed click (a dependency of Ray, for one) has other exception classes."""
    try:
        from typer._click import exceptions as cx
    except ImportError:
        import click.exceptions as cx
    return cx


def _fail(message: str, code: int, as_json: bool, report: Any = None) -> None:
    sys.stderr.write(f"mconv: error: {message}\n")
    if as_json:
        obj: dict[str, Any] = {"ok": False, "exit_code": code, "error": message}
        if isinstance(report, dict):
            obj["report"] = report
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def entry() -> None:
    """The console script: SIGINT/SIGTERM remove partial files and exit 130/143."""
    from mconv.fsutil import install_signal_cleanup

    install_signal_cleanup()  # here, not in main(): in-process callers keep their own handlers
    sys.exit(main())
