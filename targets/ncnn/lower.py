"""What lowering rules work with: :class:`Tensor`, :class:`Node`, the context
:class:`Ctx` (tensors, the ncnn graph under construction, helpers to emit and
bind layers) and shared helpers (``elementwise``, ``shape_params``, ...). The
driver that walks the folded graph and applies the rule table is
:func:`mconv.targets.ncnn.writer.lower_model`.

Tensors and the batch axis. An ncnn Mat has at most 4 dims and no batch. Every
ONNX tensor is represented by a blob holding the same values in the same C
order, with some size-1 axes left out: ``Tensor.keep`` lists the ONNX axes the
Mat has. A batched NCHW tensor has ``keep == (1, 2, 3)`` (the batch axis 0 is
dropped); a weight-like tensor without a batch keeps every axis. Because only
size-1 axes are ever dropped, changing representation is a plain Reshape, and a
tensor whose "batch" axis is larger than 1 can never be dropped: rules that need
an NC... layout (Conv, pooling, norms, Resize) refuse it with a ConversionError
naming the node (:meth:`Ctx.blob_as`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from mconv.errors import ConversionError
from mconv.targets.ncnn.fold import Prepared
from mconv.targets.ncnn.ir import Layer, NcnnGraph, Weight

MAX_DIMS = 4
# Ops whose first output has the shape of their first input.
SAME_SHAPE = {
    "GroupNormalization", "LayerNormalization", "InstanceNormalization", "RMSNormalization",
    "BatchNormalization", "Gelu", "Mish", "Swish", "HardSwish", "Relu", "Sigmoid", "Softmax",
}  # fmt: skip


class NotLowerable(Exception):
    """A rule cannot lower this node (an attribute or input form ncnn lacks)."""


@dataclass
class Tensor:
    """One ONNX tensor as the writer sees it.

    Attributes:
        name: ONNX tensor name.
        shape: full static ONNX shape.
        dtype: numpy dtype.
        const: value when constant, else None.
        blob: ncnn blob holding it (dynamic tensors).
        keep: ONNX axes present in that blob's Mat (dynamic tensors).
        dyn_batch: derived from an input whose leading dim was dynamic.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    const: np.ndarray | None = None
    blob: str | None = None
    keep: tuple[int, ...] | None = None
    dyn_batch: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def ncshape(self) -> tuple[int, ...]:
        assert self.keep is not None
        return nc_shape(self.shape, self.keep)


def nc_shape(shape: tuple[int, ...], keep: tuple[int, ...]) -> tuple[int, ...]:
    """The ncnn Mat shape (outermost first) of an ONNX shape with only ``keep`` axes."""
    s = tuple(shape[a] for a in keep)
    return s if s else (1,)


@dataclass
class Node:
    """An ONNX node with resolved inputs."""

    proto: onnx.NodeProto
    name: str
    inputs: list[Tensor | None]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.proto.op_type

    def attr(self, name: str, default=None):
        v = self.attrs.get(name, default)
        if isinstance(v, bytes):
            return v.decode()
        return v

    def inp(self, i: int) -> Tensor | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def const(self, i: int, what: str = "input") -> np.ndarray | None:
        """The constant value of input ``i`` (None when absent); dynamic -> NotLowerable."""
        t = self.inp(i)
        if t is None:
            return None
        if t.const is None:
            raise NotLowerable(f"{what} (input {i}) must be constant")
        return t.const


def default_keep(shape: tuple[int, ...], need: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The representation for a new tensor: drop a size-1 leading (batch) axis,
    then other size-1 axes while the rank exceeds ncnn's 4 dims.

    Raises:
        NotLowerable: more than 4 axes larger than 1.
    """
    keep = list(range(len(shape)))
    if len(shape) >= 2 and shape[0] == 1 and 0 not in need:
        keep.remove(0)
    for a in list(keep):
        if len(keep) <= MAX_DIMS:
            break
        if shape[a] == 1 and a not in need:
            keep.remove(a)
    if len(keep) > MAX_DIMS:
        raise NotLowerable(f"shape {list(shape)} needs more than {MAX_DIMS} ncnn dims")
    return tuple(keep)


class Ctx:
    """What rules see: tensors, the ncnn graph under construction and helpers."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        self.g = NcnnGraph()
        self.tensors: dict[str, Tensor] = {}
        self.node: Node | None = None
        self._cache: dict[tuple, str] = {}
        self.blob_map: dict[str, str] = {}
        self._auto: set[str] = set()  # blobs named by layer(), free to rename
        # Integer graph inputs: their Mats hold int32 bits, which only Embed reads.
        self.int_inputs: set[str] = set()
        self.precision = "fp32"  # of the build: rules may pick layers by it
        for name, v in prep.consts.items():
            self.tensors[name] = Tensor(name, tuple(v.shape), v.dtype, const=v)

    # -- errors -----------------------------------------------------------------
    def fail(self, msg: str) -> ConversionError:
        where = f"node '{self.node.name}' ({self.node.op}): " if self.node else ""
        return ConversionError(where + msg)

    # -- layers -----------------------------------------------------------------
    def layer(
        self,
        type_: str,
        inputs: list[str],
        out_shapes: list[tuple[int, ...]],
        params: dict | None = None,
        weights: list[Weight] | None = None,
        *,
        name: str | None = None,
        out_names: list[str] | None = None,
    ) -> list[str]:
        """Append a layer; returns its output blob names (fresh, unique)."""
        base = name or (self.node.name if self.node else type_)
        lname = self.g.unique_layer_name(base)
        outs = [
            self.g.unique_blob_name(out_names[i] if out_names else f"{lname}_out{i}") for i in range(len(out_shapes))
        ]
        layer = Layer(
            type_,
            lname,
            list(inputs),
            outs,
            dict(params or {}),
            list(weights or []),
            onnx_node=self.node.name if self.node else "",
        )
        self.g.add(layer, [tuple(s) if len(s) else (1,) for s in out_shapes])
        return outs

    def emit(
        self,
        type_: str,
        inputs: list[str],
        out_shape: tuple[int, ...],
        params: dict | None = None,
        weights: list[Weight] | None = None,
        *,
        out_name: str | None = None,
    ) -> str:
        """One-output :meth:`layer`; the blob is named after ``out_name`` if given."""
        return self.layer(
            type_,
            inputs,
            [out_shape],
            params,
            weights,
            out_names=[out_name] if out_name else None,
        )[0]

    def bind(self, onnx_name: str, blob: str, keep: tuple[int, ...] | None, *, dyn_batch: bool | None = None) -> Tensor:
        """Record that ONNX tensor ``onnx_name`` lives in ``blob`` with axes ``keep``
        (None: more axes than a Mat, see :meth:`bind_flat`)."""
        if keep is None:
            self.bind_flat(onnx_name, blob)
            return self.tensors[onnx_name]
        shape = self.shape(onnx_name)
        got = self.g.shapes.get(blob)
        want = nc_shape(shape, keep)
        if got is not None and int(np.prod(got)) != int(np.prod(want)):
            raise self.fail(f"internal: blob {blob} has {got}, tensor {onnx_name} needs {want}")
        if got is not None and tuple(got) != want:
            blob = self.reshape(blob, want, name_hint=onnx_name)
        blob = self._adopt_name(blob, onnx_name)
        if dyn_batch is None:
            dyn_batch = bool(self.node and any(t is not None and t.dyn_batch for t in self.node.inputs))
        t = Tensor(
            onnx_name,
            shape,
            self.prep.dtypes.get(onnx_name, np.dtype("float32")),
            blob=blob,
            keep=tuple(keep),
            dyn_batch=dyn_batch,
        )
        self.tensors[onnx_name] = t
        self.blob_map[onnx_name] = blob
        return t

    def _adopt_name(self, blob: str, onnx_name: str) -> str:
        """Rename a fresh auto-named blob after the ONNX tensor it holds."""
        from mconv.targets.ncnn.ir import sanitize

        want = sanitize(onnx_name, "blob")
        if blob == want or want in self.g._blobs or not self.g.layers:
            return blob
        last = self.g.layers[-1]
        if blob not in last.outputs or any(blob in x.inputs for x in self.g.layers):
            return blob
        if blob not in self._auto or blob in set(self._cache.values()):
            return blob
        self._auto.discard(blob)
        last.outputs[last.outputs.index(blob)] = want
        self.g._blobs.add(want)
        self.g.shapes[want] = self.g.shapes.pop(blob)
        return want

    def bind_view(self, onnx_name: str, blob: str) -> Tensor:
        """Bind ``blob``, which holds the tensor's values in C order in any Mat shape: as a
        Mat of the tensor's default axes, or flat when it has more than 4 axes larger than 1."""
        shape = self.shape(onnx_name)
        try:
            keep = default_keep(shape)
        except NotLowerable:
            self.bind_flat(onnx_name, blob)
            return self.tensors[onnx_name]
        return self.bind(onnx_name, self.reshape(blob, nc_shape(shape, keep), name_hint=onnx_name), keep)

    def bind_flat(self, onnx_name: str, blob: str) -> None:
        """Bind a tensor with more than 4 axes larger than 1: its values live in
        ``blob`` (C order, any Mat shape); only reshaping consumers can use it."""
        shape = self.shape(onnx_name)
        self.tensors[onnx_name] = Tensor(onnx_name, shape, np.dtype("float32"), blob=blob, keep=None)
        self.blob_map[onnx_name] = blob

    def bind_const(self, onnx_name: str, value: np.ndarray) -> None:
        v = np.asarray(value)
        self.tensors[onnx_name] = Tensor(onnx_name, tuple(v.shape), v.dtype, const=v)

    def alias(self, onnx_name: str, t: Tensor) -> None:
        """``onnx_name`` is the same values as ``t`` (Identity, Dropout, no-op Cast)."""
        if t.const is not None:
            self.bind_const(onnx_name, t.const)
            return
        self.tensors[onnx_name] = Tensor(onnx_name, t.shape, t.dtype, blob=t.blob, keep=t.keep, dyn_batch=t.dyn_batch)
        self.blob_map[onnx_name] = t.blob or ""

    def shape(self, onnx_name: str) -> tuple[int, ...]:
        s = self.prep.shapes.get(onnx_name)
        node = self.node
        if s is None and node is not None and node.op in SAME_SHAPE and node.outputs[:1] == [onnx_name]:
            # Shape inference skips some function ops (e.g. GroupNormalization-21).
            x = node.inputs[0]
            if x is not None:
                s = self.prep.shapes[onnx_name] = tuple(x.shape)
        if s is None:
            raise self.fail(
                f"the shape of '{onnx_name}' is unknown after shape inference; "
                "fix the input shapes (--input) or simplify the model first"
            )
        return s

    def out_shape(self, i: int = 0) -> tuple[int, ...]:
        assert self.node is not None
        return self.shape(self.node.outputs[i])

    # -- blobs ------------------------------------------------------------------
    def reshape(self, blob: str, to: tuple[int, ...], *, name_hint: str = "") -> str:
        """A blob with the same values as ``blob`` in Mat shape ``to`` (Reshape if needed)."""
        to = tuple(to) if to else (1,)
        if self.g.shapes.get(blob) == to:
            return blob
        key = ("reshape", blob, to)
        if key in self._cache:
            return self._cache[key]
        if len(to) > MAX_DIMS:
            raise NotLowerable(f"reshape to {list(to)} needs more than {MAX_DIMS} ncnn dims")
        out = self.emit(
            "Reshape",
            [blob],
            to,
            reshape_params(to),
            out_name=f"{name_hint or blob}_reshape",
        )
        self._cache[key] = out
        return out

    def const_blob(self, value: np.ndarray, nc: tuple[int, ...], hint: str) -> str:
        """A MemoryData blob holding ``value`` (float32) as a Mat of shape ``nc``."""
        v = np.ascontiguousarray(np.asarray(value, dtype=np.float32).reshape(nc if nc else (1,)))
        key = ("const", hint, v.shape, v.tobytes())
        if key in self._cache:
            return self._cache[key]
        nc = v.shape
        out = self.emit(
            "MemoryData",
            [],
            nc,
            shape_params(nc, keys=(0, 1, 11, 2)),
            [Weight(v.ravel(), tagged=False)],
            out_name=hint,
        )
        self._cache[key] = out
        return out

    def batched_inputs(self) -> bool:
        """Whether a graph input carries a batch > 1 (ncnn runs one item per Mat: such a
        model is refused, while a batch the model makes itself may be run item-wise)."""
        return any(len(s) >= 2 and s[0] != 1 for s in (self.prep.shapes.get(i, ()) for i in self.prep.inputs))

    def blob_as(self, t: Tensor, keep: tuple[int, ...] | None = None) -> str:
        """The blob holding ``t`` with the ONNX axes ``keep`` (default: its own).

        Raises:
            ConversionError: an axis to drop is larger than 1 (a batch > 1 that
                ncnn cannot represent).
        """
        if keep is None:
            keep = t.keep if t.keep is not None else default_keep(t.shape)
        if t.const is None and t.keep is None and t.blob is None:
            raise NotLowerable(f"'{t.name}' was not lowered")
        dropped = [a for a in range(t.rank) if a not in keep]
        big = [a for a in dropped if t.shape[a] != 1]
        if big:
            a = big[0]
            why = (
                "re-export the model with batch 1"
                if a == 0 and self.batched_inputs()
                else "the model itself moves windows, heads or rows into that axis, which no ncnn layer runs as a batch"
            )
            raise self.fail(
                f"tensor '{t.name}' of shape {list(t.shape)} needs axis {a} as its batch, but it "
                f"is {t.shape[a]}: ncnn Mats have no batch axis, so only a batch of 1 converts; {why}"
            )
        nc = nc_shape(t.shape, keep)
        if t.const is not None:
            return self.const_blob(t.const, nc, sanitize_hint(t.name))
        assert t.blob is not None
        return self.reshape(t.blob, nc, name_hint=t.name)

    def ncaxis(self, t_keep: tuple[int, ...], axis: int, rank: int) -> int:
        """The ncnn axis (outermost 0) of ONNX ``axis`` for a Mat with ``t_keep``."""
        a = axis + rank if axis < 0 else axis
        if a not in t_keep:
            raise NotLowerable(f"axis {axis} is not an axis of the ncnn Mat")
        return t_keep.index(a)


def sanitize_hint(name: str) -> str:
    from mconv.targets.ncnn.ir import sanitize

    return sanitize(name, "const")


def shape_params(nc: tuple[int, ...], keys=(0, 1, 11, 2)) -> dict[int, int]:
    """``0=w 1=h 11=d 2=c`` for an ncnn shape given outermost first."""
    kw, kh, kd, kc = keys
    r = tuple(reversed(nc))
    p: dict[int, int] = {kw: r[0]}
    if len(r) >= 2:
        p[kh] = r[1]
    if len(r) == 3:
        p[kc] = r[2]
    if len(r) == 4:
        p[kd] = r[2]
        p[kc] = r[3]
    return p


def reshape_params(nc: tuple[int, ...]) -> dict[int, int]:
    return shape_params(nc)


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def elementwise(ctx: Ctx, node: Node, type_: str, params: dict | None = None, weights=None) -> Tensor:
    """A one-input layer whose output has the input's shape and representation."""
    x = node.inputs[0]
    assert x is not None
    if x.const is not None:
        raise NotLowerable("constant input (fold it first)")
    keep = x.keep if x.keep is not None else default_keep(x.shape)
    blob = ctx.blob_as(x, keep)
    out = ctx.emit(type_, [blob], nc_shape(x.shape, keep), params, weights, out_name=node.outputs[0])
    return ctx.bind(node.outputs[0], out, keep)
