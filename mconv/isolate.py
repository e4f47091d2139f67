"""Run a function in a child process, so that a native crash or hang in a runtime
(ncnn, TensorRT, ...) becomes an error for that call instead of killing mconv."""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import signal
import traceback
from typing import Any

from mconv.errors import MconvError


class IsolatedFailure(MconvError):
    """The child process crashed, hung, or raised."""

    def __init__(self, message: str, *, kind: str, exit_code: int = 1) -> None:
        super().__init__(message, exit_code=exit_code)
        self.kind = kind  # "signal" | "timeout" | "error"


def _child(func_path: str, kwargs: dict[str, Any], conn, env: dict[str, str] | None = None) -> None:
    os.environ.update(env or {})  # before the function's module (and its framework) is imported
    from mconv.quiet import quiet

    # The parent's SIGINT handler would run here too (same process group): the parent
    # decides, and kills this child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    printed: list[str] = []
    try:
        mod, _, name = func_path.partition(":")
        fn = getattr(importlib.import_module(mod), name)
        conn.send(("started", None))  # the timeout counts from here, not the interpreter's start
        with quiet(printed):  # runtimes' own log lines are not mconv's (--verbose shows them)
            result = fn(**kwargs)
        conn.send(("ok", result))
    except MconvError as e:
        conn.send(("mconv", (type(e).__name__, e.message, e.exit_code)))
    except BaseException as e:  # report, never hang the parent
        conn.send(("error", (f"{type(e).__name__}: {e}", traceback.format_exc() + "".join(printed))))
    finally:
        conn.close()


STARTUP_SECONDS = 120.0


def call_isolated(
    func_path: str,
    kwargs: dict[str, Any],
    *,
    timeout: float | None = None,
    what: str = "runner",
    env: dict[str, str] | None = None,
) -> Any:
    """Call ``module:function(**kwargs)`` in a spawned child and return its result; ``env``
    is set in the child's environment before the function's module is imported."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(func_path, kwargs, child, env), daemon=True)
    proc.start()
    child.close()
    try:
        # Starting an interpreter and importing mconv is not the runner's time: on a
        # loaded machine it alone can take longer than a short --timeout.
        started = parent.poll(STARTUP_SECONDS)
        if started:
            try:
                status, payload = parent.recv()
            except EOFError:
                proc.join(10)
                raise _signal_failure(what, proc.exitcode) from None
            started = status == "started"
        if not started or not parent.poll(timeout):
            proc.kill()
            proc.join(5)
            if proc.exitcode is not None and proc.exitcode < 0 and proc.exitcode != -signal.SIGKILL:
                raise _signal_failure(what, proc.exitcode)
            raise IsolatedFailure(
                f"{what} timed out after {timeout:g} s and was stopped; give it longer with --timeout SECONDS",
                kind="timeout",
            )
        try:
            status, payload = parent.recv()
        except EOFError:
            proc.join(10)
            raise _signal_failure(what, proc.exitcode) from None
    finally:
        parent.close()
    proc.join(10)
    if status == "ok":
        return payload
    if status == "mconv":
        _cls, msg, code = payload
        raise IsolatedFailure(msg, kind="error", exit_code=code)
    msg, tb = payload
    err = IsolatedFailure(f"{what} failed: {msg}", kind="error")
    err.traceback = tb
    raise err


def _signal_failure(what: str, exitcode: int | None) -> IsolatedFailure:
    if exitcode is not None and exitcode < 0:
        try:
            sig = signal.Signals(-exitcode).name
        except ValueError:
            sig = f"signal {-exitcode}"
        return IsolatedFailure(f"{what} crashed natively ({sig})", kind="signal")
    return IsolatedFailure(f"{what} exited unexpectedly (exit code {exitcode})", kind="signal")
