"""Typed errors. The library raises these; only ``cli.py`` catches and prints them.

Exit codes (documented in README): 0 ok, 1 conversion error, 2 usage or input
error, 3 verification failed.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONVERSION = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3


def exit_code_of(codes) -> int:
    """The exit code of several failures' codes: 0 without failures, 3 when every failure
    is a verification failure, else 1."""
    codes = list(codes)
    if not codes:
        return EXIT_OK
    return EXIT_VERIFY if all(c == EXIT_VERIFY for c in codes) else EXIT_CONVERSION


class MconvError(Exception):
    """Base error: one actionable line of text and the exit code it maps to."""

    exit_code = EXIT_CONVERSION
    # The finished (failed) report of the command, when there is one: ``--json`` prints it
    # inside the error object.
    report: object | None = None

    def __init__(self, message: str, *, exit_code: int | None = None, report: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        if report is not None:
            self.report = report

    def with_report(self, report: object) -> MconvError:
        """This error, carrying ``report`` (for errors raised after a report was made)."""
        self.report = report
        return self

    def __str__(self) -> str:
        return self.message


class UsageError(MconvError):
    """A malformed option or argument (exit 2)."""

    exit_code = EXIT_USAGE


class InputError(MconvError):
    """An input file that is missing, unreadable, malformed or unsafe (exit 2)."""

    exit_code = EXIT_USAGE


class ConversionError(MconvError):
    """The model is valid but cannot be converted (exit 1)."""

    exit_code = EXIT_CONVERSION


class UnsupportedOpsError(ConversionError):
    """A target cannot lower some ops; ``ops`` maps op type to node names."""

    def __init__(self, target: str, ops: dict[str, list[str]]) -> None:
        self.target = target
        self.ops = ops
        parts = []
        for op, nodes in sorted(ops.items()):
            shown = ", ".join(nodes[:3]) + (", ..." if len(nodes) > 3 else "")
            parts.append(f"{op} x{len(nodes)} ({shown})")
        super().__init__(
            f"target '{target}' cannot lower {len(ops)} op type(s): "
            + "; ".join(parts)
            + f". Nothing was written; run `mconv inspect MODEL --target {target}` for details."
            + _quantized_hint(ops)
        )


def _quantized_hint(ops: dict[str, list[str]]) -> str:
    """What to do with a model quantized already: a QuantizeLinear that is still a node
    after constant folding quantizes activations, which the targets that refuse it
    (ncnn, MNN, LiteRT) quantize themselves from the float model."""
    if not {"QuantizeLinear", "DynamicQuantizeLinear"} & set(ops):
        return ""
    return (
        " The model is quantized already (Q/DQ on activations): build from the float model"
        " and let the target quantize it, with `--int8 --calib DIR`."
    )


class MissingDependencyError(MconvError):
    """An optional runtime or library is not installed (exit 1)."""

    exit_code = EXIT_CONVERSION

    def __init__(self, what: str, extra: str, detail: str = "") -> None:
        hint = f"install it with `pip install 'mconv[{extra}]'`"
        msg = f"{what} is not installed: {hint}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.extra = extra


class VerificationError(MconvError):
    """The converted artifact does not compute what the source does (exit 3)."""

    exit_code = EXIT_VERIFY

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message, report=report)
