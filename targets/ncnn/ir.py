"""The in-memory ncnn graph the lowering rules build, and its serialization.

A :class:`NcnnGraph` is a list of :class:`Layer` objects in execution order plus
the shape of every blob. Serialization writes the text ``.param`` and the binary
``.bin`` deterministically (same graph, same bytes): layer order is creation
order, parameters are written sorted by id, floats in ``%.8e`` (exact float32
round trip within ncnn's 15-character value token).
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field

import numpy as np

MAGIC = 7767517

# Tags that prefix "tagged" weight buffers (ncnn src/modelbin.cpp).
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38

# float32 limits: inf cannot be written in a param file (it has no '.' or 'e').
FLT_MAX = float(np.finfo(np.float32).max)

ParamValue = int | float | list[int] | list[float] | tuple


@dataclass
class Weight:
    """One weight buffer of a layer.

    Attributes:
        data: the values (float32, or int8 when ``kind`` is "int8").
        tagged: whether ncnn reads this buffer with a leading type tag (the
            buffers listed as "tagged" in ncnn-format.md §2); raw buffers are
            always float32 without a tag.
        kind: "fp32", "fp16" or "int8" storage for tagged buffers.
    """

    data: np.ndarray
    tagged: bool
    kind: str = "fp32"


@dataclass
class Layer:
    """One ncnn layer: type, unique name, blob names, ``id -> value`` params, weights."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue] = field(default_factory=dict)
    weights: list[Weight] = field(default_factory=list)
    onnx_node: str = ""


_SAFE = re.compile(r"[^A-Za-z0-9_.\-/:]")


def sanitize(name: str, fallback: str) -> str:
    """A name ncnn can read back: no whitespace or exotic characters, ≤ 200 chars."""
    s = _SAFE.sub("_", name or "")
    s = s.strip("_") or fallback
    return s[:200]


class NcnnGraph:
    """Layers in execution order, blob shapes (ncnn dims, outermost first), name pools."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._names: set[str] = set()
        self._blobs: set[str] = set()

    @staticmethod
    def _unique(taken: set[str], name: str) -> str:
        """``name``, or ``name_1``, ``name_2``... the first not in ``taken``; reserved."""
        if name in taken:
            i = 1
            while f"{name}_{i}" in taken:
                i += 1
            name = f"{name}_{i}"
        taken.add(name)
        return name

    def unique_layer_name(self, base: str) -> str:
        return self._unique(self._names, sanitize(base, "layer"))

    def unique_blob_name(self, base: str) -> str:
        return self._unique(self._blobs, sanitize(base, "blob"))

    def depth(self) -> int:
        """Layers on the longest path from an input (one pass over the execution order)."""
        at: dict[str, int] = {}
        deepest = 0
        for layer in self.layers:
            d = 1 + max((at.get(b, 0) for b in layer.inputs), default=0)
            for b in layer.outputs:
                at[b] = d
            deepest = max(deepest, d)
        return deepest

    def add(self, layer: Layer, shapes: list[tuple[int, ...]] | None = None) -> Layer:
        self.layers.append(layer)
        if shapes is not None:
            for b, s in zip(layer.outputs, shapes):
                self.shapes[b] = tuple(int(v) for v in s)
        return layer

    def producers(self) -> dict[str, Layer]:
        return {b: layer for layer in self.layers for b in layer.outputs}

    def consumers(self) -> dict[str, list[Layer]]:
        out: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for b in layer.inputs:
                out.setdefault(b, []).append(layer)
        return out

    def insert_splits(self) -> None:
        """Give every blob with several consumers its own Split layer.

        ncnn lets a blob feed one layer only; a second consumer silently reads
        a blob the first one may have modified in place (ncnn-format.md §1).
        The Split goes right after the producer so file order stays topological.
        """
        consumers = self.consumers()
        new_layers: list[Layer] = []
        for layer in self.layers:
            new_layers.append(layer)
            for b in layer.outputs:
                users = consumers.get(b, [])
                n_uses = sum(u.inputs.count(b) for u in users)
                if n_uses < 2:
                    continue
                outs = []
                for u in users:
                    for i, name in enumerate(u.inputs):
                        if name == b:
                            nb = self.unique_blob_name(f"{b}_splitncnn_{len(outs)}")
                            self.shapes[nb] = self.shapes.get(b, ())
                            u.inputs[i] = nb
                            outs.append(nb)
                split = Layer("Split", self.unique_layer_name(f"splitncnn_{b}"), [b], outs)
                new_layers.append(split)
        self.layers = new_layers

    def blob_count(self) -> int:
        names: set[str] = set()
        for layer in self.layers:
            names.update(layer.inputs)
            names.update(layer.outputs)
        return len(names)

    def add_shape_hints(self) -> int:
        """Record the output shape (param 30, ``-23330=``) of each 3x3 stride-1 ``Convolution``
        whose output shape is static; returns how many were recorded.

        ncnn's x86 Convolution picks its Winograd variant (F(2,3), F(4,3), F(6,3)) from this
        hint when the pipeline is created; without one it prepares F(4,3) only (F(6,3) up
        to 32 channels) and the forward pass, which would pick by the actual size, falls
        back to it. On the CPU a hint only chooses among exact algorithms; on Vulkan it
        specializes the shaders to that size (see README: such a model runs at the build's
        input size).
        """
        n = 0
        for layer in self.layers:
            if layer.type != "Convolution" or len(layer.outputs) != 1:
                continue
            p = layer.params
            kw = p.get(1, 0)
            kh, dw, sw = p.get(11, kw), p.get(2, 1), p.get(3, 1)
            if (kw, kh, dw, p.get(12, dw), sw, p.get(13, sw)) != (3, 3, 1, 1, 1, 1):
                continue
            shape = self.shapes.get(layer.outputs[0], ())
            if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
                continue
            c, h, w = shape
            p[30] = [3, w, h, 0, c]  # dims, w, h, d, c (ncnn src/net.cpp reads 5 ints a top)
            n += 1
        return n

    def to_param(self) -> str:
        lines = [str(MAGIC), f"{len(self.layers)} {self.blob_count()}"]
        for layer in self.layers:
            head = [
                f"{layer.type:<16}",
                f"{layer.name:<24}",
                str(len(layer.inputs)),
                str(len(layer.outputs)),
                *layer.inputs,
                *layer.outputs,
            ]
            params = [_format_param(k, v) for k, v in sorted(layer.params.items())]
            lines.append(" ".join(head + params))
        return "\n".join(lines) + "\n"

    def to_bin(self) -> bytes:
        parts: list[bytes] = []
        for layer in self.layers:
            for w in layer.weights:
                parts.append(_weight_bytes(w))
        return b"".join(parts)

    def write_bin(self, f) -> None:
        """Write the same bytes as :meth:`to_bin` to the binary file ``f``, one
        slice at a time (no copy of the whole ``.bin`` in memory)."""
        for layer in self.layers:
            for w in layer.weights:
                _write_weight(f, w)


def _format_scalar(v: float | int | np.generic) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    if f != f:  # NaN: nothing sensible to write
        raise ValueError("NaN parameter value")
    f = max(-FLT_MAX, min(FLT_MAX, f))
    return f"{f:.8e}"


def _format_param(key: int, value: ParamValue) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        vals = list(value)
        # Arrays always in the long form: `9=1` would read as a scalar.
        return f"{-(23300 + key)}=" + ",".join([str(len(vals))] + [_format_scalar(v) for v in vals])
    return f"{key}={_format_scalar(value)}"


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _weight_bytes(w: Weight) -> bytes:
    if not w.tagged:
        return np.ascontiguousarray(w.data, dtype="<f4").tobytes()
    if w.kind == "fp16":
        return struct.pack("<I", TAG_FP16) + _pad4(np.ascontiguousarray(w.data, dtype="<f2").tobytes())
    if w.kind == "int8":
        return struct.pack("<I", TAG_INT8) + _pad4(np.ascontiguousarray(w.data, np.int8).tobytes())
    return struct.pack("<I", TAG_FP32) + np.ascontiguousarray(w.data, dtype="<f4").tobytes()


_CHUNK = 16 << 20


def _weight_array(w: Weight) -> tuple[bytes, np.ndarray]:
    """(tag, contiguous little-endian values) of a weight as stored in the ``.bin``."""
    if not w.tagged:
        return b"", np.ascontiguousarray(w.data, dtype="<f4")
    if w.kind == "fp16":
        return struct.pack("<I", TAG_FP16), np.ascontiguousarray(w.data, dtype="<f2")
    if w.kind == "int8":
        return struct.pack("<I", TAG_INT8), np.ascontiguousarray(w.data, np.int8)
    return struct.pack("<I", TAG_FP32), np.ascontiguousarray(w.data, dtype="<f4")


def _write_weight(f, w: Weight) -> None:
    head, a = _weight_array(w)
    f.write(head)
    flat = a.reshape(-1)
    step = max(1, _CHUNK // max(1, flat.itemsize))
    for i in range(0, flat.size, step):
        part = flat[i : i + step]
        f.write(memoryview(part).cast("B"))
        drop_pages(part)
    if head and w.kind in ("fp16", "int8"):
        f.write(b"\0" * (-a.nbytes % 4))


def mapped_base(a: np.ndarray) -> mmap.mmap | None:
    """The read-only file mapping ``a`` views, if any."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def drop_pages(a: np.ndarray) -> None:
    """Let the kernel drop the resident pages of ``a`` when it views a read-only file
    mapping (the data stays in the file; touching it again reads it back)."""
    base = mapped_base(a) if isinstance(a, np.ndarray) else None
    if base is None or a.nbytes == 0 or base.closed:
        return
    origin = np.frombuffer(base, np.uint8).ctypes.data
    start = a.ctypes.data - origin
    lo = max(0, start // mmap.PAGESIZE * mmap.PAGESIZE)
    hi = min(len(base), start + a.nbytes)
    if hi > lo:
        try:
            base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            pass
