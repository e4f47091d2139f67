"""The TFLite graph the lowering builds: tensors (with constant data and
quantization), operators (a builtin code, its options) and the subgraph's inputs
and outputs. :mod:`mconv.targets.litert.flatbuf` serialises it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# numpy dtype name -> tflite TensorType
TENSOR_TYPES = {
    "float32": 0,
    "float16": 1,
    "int32": 2,
    "uint8": 3,
    "int64": 4,
    "bool": 6,
    "int16": 7,
    "int8": 9,
    "float64": 10,
}


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    data: np.ndarray | None = None  # constants only
    quant: Quant | None = None


@dataclass
class Op:
    """One operator: ``code`` is a ``tflite.BuiltinOperator`` name; ``options`` names a
    ``*Options`` table and its scalar fields (flatbuffer field names, CamelCase)."""

    code: str
    inputs: list[int]
    outputs: list[int]
    options: tuple[str, dict[str, Any]] | None = None


@dataclass
class Graph:
    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def tensor(self, name: str, shape, dtype: str = "float32", quant: Quant | None = None) -> int:
        self.tensors.append(Tensor(self._unique(name), tuple(int(d) for d in shape), str(dtype), None, quant))
        return len(self.tensors) - 1

    def const(self, name: str, value, dtype: str | None = None, quant: Quant | None = None) -> int:
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.tensors.append(Tensor(self._unique(name), arr.shape, arr.dtype.name, arr, quant))
        return len(self.tensors) - 1

    def i32(self, name: str, values) -> int:
        return self.const(name, np.asarray(values, dtype=np.int64).astype(np.int32))

    def op(self, code: str, inputs: list[int], outputs: list[int], options: str | None = None, **fields) -> Op:
        o = Op(code, list(inputs), list(outputs), (options, fields) if options else None)
        self.ops.append(o)
        return o

    def unary(self, code: str, x: int, name: str, options: str | None = None, **fields) -> int:
        """``code(x)`` into a new tensor of x's shape and type."""
        t = self.tensors[x]
        y = self.tensor(name, t.shape, t.dtype)
        self.op(code, [x], [y], options, **fields)
        return y

    def compact(self) -> None:
        """Drop tensors no op or graph I/O refers to (weights replaced by their int8 or
        float16 copies, outputs of fused activations), renumbering the rest."""
        used = set(self.inputs) | set(self.outputs)
        for o in self.ops:
            used.update(i for i in o.inputs if i >= 0)
            used.update(o.outputs)
        keep = sorted(used)
        index = {old: new for new, old in enumerate(keep)}
        self.tensors = [self.tensors[i] for i in keep]
        for o in self.ops:
            o.inputs = [index[i] if i >= 0 else i for i in o.inputs]
            o.outputs = [index[i] for i in o.outputs]
        self.inputs = [index[i] for i in self.inputs]
        self.outputs = [index[i] for i in self.outputs]

    def consumers(self) -> dict[int, list[Op]]:
        out: dict[int, list[Op]] = {}
        for o in self.ops:
            for i in o.inputs:
                out.setdefault(i, []).append(o)
        return out
