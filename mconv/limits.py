"""Limits derived from the model: the largest tensor constant folding may create,
and how long a runner in a child process may take.

Model files come from strangers: a 4-node graph can ask for an ``Expand`` of a
1x1 constant to [60000, 60000] (13.4 GiB). Folding never materialises a tensor
above :func:`fold_limit`; the nodes above it stay in the graph (passes) or are
reported as unsupported (targets).
"""

from __future__ import annotations

import os
import re

import onnx

from mconv.errors import UsageError

# 1 GiB, not less: the onnx package's light models (vgg19: a 392 MiB fc weight) carry
# their weights as ConstantOfShape nodes, so their weight bytes are ~0.
FOLD_FLOOR = 1 << 30
FOLD_ENV = "MCONV_FOLD_LIMIT"
TIMEOUT_ENV = "MCONV_TIMEOUT"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, option: str) -> int:
    """``"512M"``, ``"2G"``, ``"1048576"`` -> bytes; ``option`` names the source in the error."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not m:
        raise UsageError(f"{option}: {text!r} is not a size; give bytes or a size like 512M or 2G")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise UsageError(f"{option}: {text!r} must be above zero")
    return n


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers and constant attributes (external data included)."""
    from mconv.modelio import iter_tensors, tensor_nbytes

    return sum(tensor_nbytes(t) for t in iter_tensors(model))


def fold_limit(model: onnx.ModelProto | None = None) -> int:
    """The largest tensor (bytes) folding may create: ``$MCONV_FOLD_LIMIT`` (set by
    ``--fold-limit``) when given, else max(1 GiB, 2 x the model's weight bytes)."""
    env = os.environ.get(FOLD_ENV)
    if env:
        return parse_size(env, f"{FOLD_ENV} (or --fold-limit)")
    return max(FOLD_FLOOR, 2 * weight_bytes(model)) if model is not None else FOLD_FLOOR


def runner_timeout(model: onnx.ModelProto | None, override: float | None = None) -> float:
    """Seconds a runner child may take: ``override`` (``--timeout``), ``$MCONV_TIMEOUT``,
    else 120 s + 60 s per GiB of weights + 20 ms per node (compile time grows with both)."""
    if override is not None:
        return float(override)
    env = os.environ.get(TIMEOUT_ENV)
    if env:
        try:
            v = float(env)
        except ValueError:
            v = -1.0
        if v <= 0:
            raise UsageError(f"{TIMEOUT_ENV}: {env!r} is not a positive number of seconds")
        return v
    if model is None:
        return 600.0
    nodes = len(model.graph.node)
    return 120.0 + 60.0 * weight_bytes(model) / (1 << 30) + 0.02 * nodes


def human(n: int) -> str:
    """Bytes as a short human size (``13.4 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# Above this many weight bytes, build and verify avoid holding a second copy of the model.
BIG_MODEL_BYTES = 512 << 20
