"""ONNX -> TFLite graph, with each tensor's layout tracked.

ONNX activations are NCHW; TFLite's conv, pool, resize and LRN kernels are NHWC.
Every ONNX tensor may exist in two physical layouts: ``"onnx"`` (ONNX's own axis
order) and ``"nhwc"`` (4-D only, ONNX axes permuted by (0, 2, 3, 1)). A rule
asks for its inputs in the layout it needs (:meth:`Lowering.get`); a TRANSPOSE
is emitted only when that layout does not exist yet, and kept, so a tensor is
transposed at most once per direction. Layout-agnostic ops (elementwise,
concat, reductions, softmax over channels, split, pad, slice) follow their
inputs' layout and remap their axes, so chains of them add no transposes. A
transpose that moves only size-1 axes becomes a RESHAPE (e.g. the pooled
[N,1,1,C] before a Flatten). Graph inputs and outputs are in ``io_layout``:
``onnx`` (feeds as for onnxruntime) or ``nhwc`` for 4-D tensors (MediaPipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from mconv.errors import ConversionError, UnsupportedOpsError
from mconv.targets.litert.graph import Graph
from mconv.targets.ncnn.fold import Prepared

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def nhwc_axis(axis: int) -> int:
    """Where ONNX axis ``axis`` (of a 4-D tensor) lies in NHWC."""
    return TO_NHWC.index(axis)


def moves_only_ones(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """True when transposing ``shape`` by ``perm`` keeps the data order (a reshape)."""
    kept = [p for p in perm if shape[p] != 1]
    return kept == sorted(kept)


@dataclass
class Lowering:
    """State of one lowering: the prepared ONNX model and the TFLite graph being built."""

    prep: Prepared
    graph: Graph = field(default_factory=Graph)
    # ONNX name -> layout -> tensor index
    values: dict[str, dict[str, int]] = field(default_factory=dict)
    home: dict[str, str] = field(default_factory=dict)  # the layout a value was produced in
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)

    # -- queries
    def shape(self, name: str) -> tuple[int, ...]:
        s = self.prep.shapes.get(name)
        if s is None:
            raise ConversionError(f"tensor '{name}' has no static shape; give the input shapes with --input")
        return tuple(int(d) for d in s)

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def const(self, name: str) -> np.ndarray | None:
        if not name or name not in self.prep.consts:
            return None
        return np.asarray(self.prep.consts[name])

    def non_negative(self, name: str) -> bool:
        """True when ONNX value ``name`` cannot be negative (a ReLU-like producer)."""
        n = self.producers.get(name)
        if n is None:
            return False
        if n.op_type in ("Relu", "Sigmoid", "Softmax", "Abs", "Exp"):
            return True
        if n.op_type == "Clip":
            lo = attrs(n).get("min")
            if len(n.input) > 1 and n.input[1]:
                v = self.const(n.input[1])
                lo = None if v is None else float(v)
            return lo is not None and lo >= 0
        return False

    def layout(self, name: str) -> str:
        """The layout ``name`` is cheapest in (constants: onnx)."""
        return self.home.get(name, "onnx")

    def follow(self, names) -> str:
        """The layout a layout-agnostic op on ``names`` runs in: nhwc when a 4-D
        activation input already is and every activation input is 4-D."""
        acts = [n for n in names if n and self.const(n) is None]
        if acts and any(self.layout(n) == "nhwc" for n in acts) and all(self.rank(n) == 4 for n in acts):
            return "nhwc"
        return "onnx"

    # -- tensors
    def get(self, name: str, layout: str = "onnx", dtype: str | None = None) -> int:
        """The tensor holding ONNX value ``name`` in ``layout`` (transposed once if needed)."""
        have = self.values.get(name)
        if have is None:
            value = self.const(name)
            if value is None:
                raise ConversionError(f"tensor '{name}' is used before it is produced")
            return self.const_tensor(name, value, layout, dtype)
        if layout in have:
            return have[layout]
        src = next(iter(have.values()))
        perm = TO_NHWC if layout == "nhwc" else TO_NCHW
        src_shape = self.graph.tensors[src].shape
        out_shape = tuple(src_shape[p] for p in perm)
        t = self.graph.tensor(f"{name}__{layout}", out_shape, self.graph.tensors[src].dtype)
        if moves_only_ones(src_shape, perm):
            self.graph.op("RESHAPE", [src, self.graph.i32(f"{name}__shape", out_shape)], [t])
        else:
            self.graph.op("TRANSPOSE", [src, self.graph.i32(f"{name}__perm", perm)], [t])
        have[layout] = t
        return t

    def const_tensor(self, name: str, value: np.ndarray, layout: str, dtype: str | None = None) -> int:
        value = np.asarray(value)
        if layout == "nhwc" and value.ndim > 0:
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(TO_NHWC)
        if dtype is not None:
            value = value.astype(dtype)
        elif value.dtype == np.int64:
            value = value.astype(np.int32)
        elif value.dtype == np.float64:
            value = value.astype(np.float32)
        key = f"const:{layout}:{dtype}"
        cache = self.values.setdefault(f"{key}:{name}", {})
        if "t" not in cache:
            cache["t"] = self.graph.const(name, value)
        return cache["t"]

    def put(self, name: str, layout: str, dtype: str | None = None) -> int:
        """A new tensor for ONNX value ``name`` produced in ``layout``."""
        shape = self.shape(name)
        if layout == "nhwc":
            shape = tuple(shape[p] for p in TO_NHWC)
        dt = dtype or np.dtype(self.prep.dtypes.get(name, np.float32)).name
        dt = {"int64": "int32", "float64": "float32"}.get(dt, dt)
        t = self.graph.tensor(name, shape, dt)
        self.values[name] = {layout: t}
        self.home[name] = layout
        return t

    def alias(self, name: str, src: str) -> None:
        """``name`` is ``src`` (Identity, Dropout)."""
        if src in self.values:
            self.values[name] = self.values[src]
            self.home[name] = self.home.get(src, "onnx")
        else:
            self.prep.consts[name] = self.prep.consts[src]

    def emit(self, code: str, inputs: list[int], out: str, layout: str, options: str | None = None, **fields) -> int:
        """One op producing ONNX value ``out`` in ``layout``; returns its tensor."""
        t = self.put(out, layout)
        self.graph.op(code, inputs, [t], options, **fields)
        return t

    def temp(self, name: str, shape, dtype: str = "float32") -> int:
        return self.graph.tensor(name, shape, dtype)


def lower_nodes(low: Lowering, nodes: list[onnx.NodeProto], rules: dict) -> None:
    missing: dict[str, list[str]] = {}
    for i, n in enumerate(nodes):
        if n.op_type not in rules or n.domain not in ("", "ai.onnx"):
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            missing.setdefault(key, []).append(n.name or f"{n.op_type}_{i}")
    if missing:
        raise UnsupportedOpsError("litert", missing)
    low.producers = {o: n for n in nodes for o in n.output}
    for n in nodes:
        if all(o in low.prep.consts for o in n.output if o):
            continue
        try:
            rules[n.op_type](low, n)
        except ConversionError as e:
            if isinstance(e, UnsupportedOpsError) or (n.name and n.name in e.message):
                raise
            raise ConversionError(f"node '{n.name}' ({n.op_type}): {e.message}") from e
