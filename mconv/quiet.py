"""Silence native libraries that print to file descriptors 1 and 2 directly.

stderr carries only mconv's own lines: onnxruntime, onnxsim, onnxslim, NNCF,
OpenVINO and ncnn print through C++ loggers, ``printf`` and Python logging, so
their calls run inside :func:`quiet`. ``--verbose``/``--debug`` set
``MCONV_VERBOSE=1`` (inherited by runner child processes), which lets it all through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "MCONV_VERBOSE"


def verbose() -> bool:
    """Whether third-party output should reach the terminal (``--verbose``/``--debug``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def quiet(capture: list[str] | None = None) -> Iterator[None]:
    """Redirect fd 1/2 (and Python's streams, warnings, logging) to a temporary file.

    What was printed is appended to ``capture`` when given (for --debug output).
    Does nothing when :func:`verbose` is on.
    """
    if verbose():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(tmp.fileno(), fd)
                except OSError:
                    pass
            logging.disable(logging.CRITICAL)
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()) as out,
                contextlib.redirect_stderr(io.StringIO()) as err,
            ):
                warnings.simplefilter("ignore")
                try:
                    yield
                finally:
                    if capture is not None:
                        capture.append(out.getvalue() + err.getvalue())
        finally:
            logging.disable(logging.NOTSET)
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            if capture is not None:
                tmp.seek(0)
                capture.append(tmp.read().decode("utf-8", "replace"))
