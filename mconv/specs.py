"""Parsing of command-line input specs.

``NAME:1x3x224x224[:float32]`` fixes an input's shape (and dtype);
``NAME:AXIS=label`` marks an axis dynamic; ``NAME:MIN:OPT:MAX`` is a
TensorRT-style shape profile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mconv.errors import UsageError

DTYPES = {
    "float32": np.float32,
    "float": np.float32,
    "fp32": np.float32,
    "float16": np.float16,
    "fp16": np.float16,
    "half": np.float16,
    "float64": np.float64,
    "double": np.float64,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.dtype])


@dataclass(frozen=True)
class DynamicAxis:
    name: str
    axis: int
    label: str


@dataclass(frozen=True)
class ShapeProfile:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def parse_shape(text: str, option: str = "--input") -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "scalar"):
        return ()
    if not re.fullmatch(r"\d+(x\d+)*", text):
        raise UsageError(f"{option}: bad shape '{text}'; write dimensions joined by 'x', e.g. 1x3x224x224")
    dims = tuple(int(d) for d in text.split("x"))
    if any(d <= 0 for d in dims):
        raise UsageError(f"{option}: shape '{text}' has a zero dimension; every dimension must be >= 1")
    return dims


def parse_input_spec(text: str) -> InputSpec:
    """``NAME:1x3x224x224[:float32]``."""
    parts = text.rsplit(":", 2) if text.count(":") >= 2 else text.split(":")
    if len(parts) < 2 or not parts[0]:
        raise UsageError(f"--input '{text}': expected NAME:SHAPE[:DTYPE], e.g. input:1x3x224x224:float32")
    name, shape = parts[0], parts[1]
    dtype = parts[2] if len(parts) == 3 else "float32"
    if dtype not in DTYPES:
        raise UsageError(f"--input '{text}': unknown dtype '{dtype}'; use one of {', '.join(sorted(set(DTYPES)))}")
    canonical = np.dtype(DTYPES[dtype]).name
    return InputSpec(name, parse_shape(shape), canonical)


def parse_dynamic(text: str) -> DynamicAxis:
    """``NAME:AXIS=label``."""
    m = re.fullmatch(r"([^:]+):(\d+)=([A-Za-z_][\w]*)", text.strip())
    if not m:
        raise UsageError(f"--dynamic '{text}': expected NAME:AXIS=label, e.g. input:0=batch")
    return DynamicAxis(m.group(1), int(m.group(2)), m.group(3))


def parse_profile(text: str) -> ShapeProfile:
    """``NAME:MIN:OPT:MAX`` with each shape like 1x3x224x224."""
    parts = text.split(":")
    if len(parts) != 4 or not parts[0]:
        raise UsageError(
            f"--shape '{text}': expected NAME:MIN:OPT:MAX, e.g. input:1x3x224x224:8x3x224x224:32x3x224x224"
        )
    name = parts[0]
    lo, opt, hi = (parse_shape(p, "--shape") for p in parts[1:])
    if not (len(lo) == len(opt) == len(hi)):
        raise UsageError(f"--shape '{text}': MIN, OPT and MAX must have the same rank")
    if any(not (a <= b <= c) for a, b, c in zip(lo, opt, hi)):
        raise UsageError(f"--shape '{text}': each dimension needs MIN <= OPT <= MAX")
    return ShapeProfile(name, lo, opt, hi)
