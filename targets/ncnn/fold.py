"""Static shapes and constants for the writer.

ncnn layers take literal shapes, so the writer needs every tensor's static shape
and every constant's value. :func:`fold_graph` fixes the input shapes (a dynamic
leading dim becomes a batch of 1), runs ONNX shape inference, and folds nodes
whose inputs are all constant (plus ``Shape``/``Size`` of statically shaped
tensors), repeating until nothing changes. The lead's ``mconv.passes`` does the
same ahead of the writer; this is the writer's own guarantee for models handed
to it directly.

Large initializers (:data:`LAZY_BYTES` and up) can stay TensorProtos until a
rule needs their values (``fold_graph(mode="lazy" | "consume")``): shapes and
dtypes come from ``dims``/``data_type``, so checking a model never copies its
weights. See :class:`LazyConst`.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from dataclasses import dataclass, field

import numpy as np
import onnx
from numpy.lib.mixins import NDArrayOperatorsMixin
from onnx import TensorProto, helper, numpy_helper

from mconv.errors import ConversionError
from mconv.passes.evaluate import evaluate_node, is_foldable

# Initializers larger than this are hidden from shape inference (it only needs
# their shapes; serializing hundreds of MB for it is slow).
_BIG = 4096
# Initializers this large are read lazily (modes "lazy" and "consume").
LAZY_BYTES = 1 << 20
# Consumed values this large are moved to the Scratch file (one mapping each, so
# only the few largest: smaller ones stay in memory until their last consumer).
SCRATCH_VALUE_BYTES = 64 << 20
# Element types read with np.frombuffer as numpy_helper.to_array does.
_LAZY_TYPES = {
    TensorProto.FLOAT,
    TensorProto.DOUBLE,
    TensorProto.FLOAT16,
    TensorProto.INT8,
    TensorProto.UINT8,
    TensorProto.INT16,
    TensorProto.UINT16,
    TensorProto.INT32,
    TensorProto.UINT32,
    TensorProto.INT64,
    TensorProto.UINT64,
    TensorProto.BOOL,
}
_PAGE = mmap.PAGESIZE


class Scratch:
    """An anonymous temporary file that holds large arrays out of memory.

    Arrays are appended with ``os.pwrite`` (page cache, not this process's
    memory) and read back through read-only shared mappings, whose pages only
    count as resident while touched (see :func:`drop_pages`). The file has no
    name and disappears with its last mapping.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._f = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close())
        self.size = 0
        self._parked: list[tuple] = []

    def _reserve(self, nbytes: int) -> int:
        off = -(-self.size // _PAGE) * _PAGE
        self.size = off + nbytes
        return off

    def write(self, data) -> int:
        """Append ``data`` (a contiguous array or bytes); return its page-aligned offset."""
        mv = memoryview(data).cast("B")
        off = self._reserve(mv.nbytes)
        fd = self._f.fileno()
        pos = 0
        while pos < mv.nbytes:
            pos += os.pwrite(fd, mv[pos : pos + (64 << 20)], off + pos)
        return off

    def write_transposed(self, a: np.ndarray) -> int:
        """Append ``a.T`` in C order (so ``result.T`` is ``a`` in Fortran order), in row blocks."""
        rows, cols = a.shape
        off = self._reserve(a.nbytes)
        fd = self._f.fileno()
        step = max(1, (16 << 20) // max(1, rows * a.itemsize))
        for j in range(0, cols, step):
            block = np.ascontiguousarray(a[:, j : j + step].T)
            os.pwrite(fd, memoryview(block).cast("B"), off + j * rows * a.itemsize)
        return off

    def view(self, off: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only array over ``[off, off + nbytes)`` (one mapping)."""
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if n == 0:
            return np.zeros(shape, dtype)
        self._f.flush()
        mm = mmap.mmap(self._f.fileno(), n, access=mmap.ACCESS_READ, offset=off)
        return np.frombuffer(mm, dtype=dtype, count=n // np.dtype(dtype).itemsize).reshape(shape)

    def mapping(self) -> mmap.mmap | None:
        """One read-only mapping of the whole file (None when it is empty)."""
        if self.size == 0:
            return None
        self._f.flush()
        if os.fstat(self._f.fileno()).st_size < self.size:
            os.ftruncate(self._f.fileno(), self.size)
        return mmap.mmap(self._f.fileno(), self.size, access=mmap.ACCESS_READ)

    def park(self, holder) -> None:
        """Move ``holder.data`` (an array) to the file until :meth:`restore`;
        meanwhile ``holder.data`` is a marker that is no array."""
        a = np.ascontiguousarray(holder.data)
        off = self.write(a)
        self._parked.append((holder, off, a.dtype, a.shape))
        holder.data = _Parked(off)

    def restore(self) -> None:
        """Point every parked holder at its data in one read-only mapping of the file."""
        if not self._parked:
            return
        mm = self.mapping()
        for holder, off, dtype, shape in self._parked:
            n = int(np.prod(shape, dtype=np.int64))
            holder.data = np.frombuffer(mm, dtype=dtype, count=n, offset=off).reshape(shape)
        self._parked = []

    def close(self) -> None:
        """Close the file; live mappings keep its data until they go."""
        self._f.close()


class _Parked:
    """Stands for data moved to a :class:`Scratch` until ``restore()``."""

    __slots__ = ("offset",)

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _lazy_ok(t: onnx.TensorProto) -> bool:
    from mconv.modelio import tensor_nbytes

    return (
        t.data_type in _LAZY_TYPES
        and t.HasField("raw_data")
        and t.data_location != TensorProto.EXTERNAL
        and not t.HasField("segment")
        and tensor_nbytes(t) >= LAZY_BYTES
    )


class LazyConst(NDArrayOperatorsMixin):
    """A large initializer read only when a rule needs its values.

    ``shape``, ``dtype``, ``size``, ``ndim`` and ``nbytes`` come from the
    TensorProto's ``dims``/``data_type`` without touching its data (reading
    ``raw_data`` copies the whole buffer). :meth:`value` converts it like
    ``numpy_helper.to_array``; ``np.asarray``, attribute access and numpy
    operators go through it, so it stands in for an array anywhere.

    Without ``consume`` every read is a fresh conversion and the model is left
    as it was. With ``consume`` the first read clears the tensor's ``raw_data``
    (the writer owns the model), keeps the value until :meth:`release`, and, when
    a :class:`Scratch` is given, moves it to that file so that it does not stay
    in memory; ``reads`` counts the conversions.
    """

    def __init__(self, tensor: onnx.TensorProto, *, consume: bool = False, scratch: Scratch | None = None) -> None:
        self.tensor = tensor
        self.name = tensor.name
        self.shape = tuple(int(d) for d in tensor.dims)
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ndim = len(self.shape)
        self.nbytes = self.size * self.dtype.itemsize
        self.consume = consume
        self.scratch = scratch
        self.reads = 0
        self._value: np.ndarray | None = None
        self._gone: weakref.ref | None = None

    def value(self, *, transposed: bool = False) -> np.ndarray:
        """The values (read-only). ``transposed`` is a layout hint for a consumer
        that will read ``value.T`` contiguously: the array is then stored in
        Fortran order (same values, no copy when the consumer transposes)."""
        if self._value is not None:
            return self._value
        if self._gone is not None:
            v = self._gone()
            if v is not None:
                return v
            raise RuntimeError(f"internal: constant '{self.name}' was read after its last use")
        self.reads += 1
        v = numpy_helper.to_array(self.tensor)
        if not self.consume:
            return v
        self.tensor.ClearField("raw_data")
        if self.scratch is not None and v.size and v.nbytes >= SCRATCH_VALUE_BYTES:
            if transposed and v.ndim == 2:
                off = self.scratch.write_transposed(v)
                v = self.scratch.view(off, v.dtype, (v.shape[1], v.shape[0])).T
            else:
                off = self.scratch.write(np.ascontiguousarray(v))
                v = self.scratch.view(off, v.dtype, v.shape)
        self._value = v
        return v

    def placeholder(self) -> np.ndarray:
        """Zeros of the right shape and dtype (untouched pages cost no memory)."""
        return np.zeros(self.shape, self.dtype)

    def release(self) -> None:
        """The last consumer is done: drop the kept value (arrays built on it keep theirs)."""
        if self._value is not None:
            self._gone = weakref.ref(self._value)
            self._value = None

    def __array__(self, dtype=None, copy=None):
        v = self.value()
        if copy:
            return np.array(v, dtype=dtype, copy=True)
        return v if dtype is None else v.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(np.asarray(x) if isinstance(x, LazyConst) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("tensor", "_value", "_gone"):
            raise AttributeError(name)
        return getattr(self.value(), name)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __iter__(self):
        return iter(self.value())

    def __getitem__(self, key):
        return self.value()[key]

    def __repr__(self) -> str:
        return f"LazyConst({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def value_of(v):
    """An ndarray for a constant that may be a :class:`LazyConst`."""
    return v.value() if isinstance(v, LazyConst) else v


@dataclass
class Prepared:
    """A model ready for lowering.

    Attributes:
        nodes: the nodes left after folding, in topological order.
        consts: tensor name -> value for every constant.
        shapes: tensor name -> static shape.
        dtypes: tensor name -> numpy dtype.
        inputs: graph input names (initializers excluded).
        outputs: graph output names.
        dyn_batch: inputs whose leading dim was dynamic and fixed to 1.
        opset: the default-domain opset.
        fold_limit: the largest tensor folding may create (bytes).
        too_big: first output -> bytes (None: unbounded) of nodes left unfolded
            because their output would exceed ``fold_limit``.
    """

    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    inputs: list[str]
    outputs: list[str]
    dyn_batch: set[str] = field(default_factory=set)
    opset: int = 13
    fold_limit: int = 1 << 30
    too_big: dict[str, int | None] = field(default_factory=dict)


def _dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def _np_dtype(elem_type: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return np.dtype("float32")


def fixed_input_shapes(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Concrete input shapes: overrides first, a dynamic leading dim becomes 1.

    Raises:
        ConversionError: an input has another dynamic dim or an unknown rank.
    """
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    dyn: set[str] = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if overrides and vi.name in overrides:
            shapes[vi.name] = tuple(int(v) for v in overrides[vi.name])
            continue
        dims = _dims(vi)
        if dims is None:
            raise ConversionError(
                f"input '{vi.name}' has an unknown rank; give its shape, e.g. --input {vi.name}:1x3x224x224"
            )
        fixed = []
        for i, d in enumerate(dims):
            if d is None or d <= 0:
                if i != 0:
                    raise ConversionError(
                        f"input '{vi.name}' has dynamic dimension {i}; ncnn params need static "
                        f"shapes: give it with --input {vi.name}:" + "x".join(str(x) if x else "N" for x in dims)
                    )
                dyn.add(vi.name)
                d = 1
            fixed.append(int(d))
        shapes[vi.name] = tuple(fixed)
    return shapes, dyn


def evaluate_constant(node: onnx.NodeProto, vals: list[np.ndarray | None], opset: int) -> list[np.ndarray | None]:
    """The writer's constant evaluation of one node: the shared evaluator on onnx's
    reference kernels (the ones the rules were checked against), one value per output."""
    return evaluate_node(node, vals, opset, numpy_kernels=False)


def _infer(
    model: onnx.ModelProto,
    graph_inputs: list[onnx.ValueInfoProto],
    consts: dict[str, np.ndarray],
    nodes: list[onnx.NodeProto],
) -> onnx.ModelProto:
    """Shape inference on a light copy: big constants become typed inputs."""
    g = model.graph
    inits = []
    extra_inputs = []
    for name, v in consts.items():
        if v.size <= _BIG:
            inits.append(numpy_helper.from_array(np.asarray(v), name))
        else:
            extra_inputs.append(
                helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            )
    inputs = [vi for vi in graph_inputs if vi.name not in consts] + extra_inputs
    light = helper.make_graph(nodes, g.name or "g", inputs, list(g.output), inits)
    # IR < 4 ignores initializers that are not graph inputs: use a newer IR.
    ir = max(model.ir_version, 8)
    m = helper.make_model(light, opset_imports=list(model.opset_import), ir_version=ir)
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # inference errors leave shapes unknown; rules then report
        return m


def fold_graph(
    model: onnx.ModelProto,
    overrides: dict[str, tuple[int, ...]] | None = None,
    *,
    mode: str = "eager",
    scratch: Scratch | None = None,
) -> Prepared:
    """Fix input shapes, infer shapes and fold constants (see module docstring).

    ``mode``: "eager" converts every initializer to an array; "lazy" leaves the
    large ones (:data:`LAZY_BYTES`) as :class:`LazyConst` read on demand, the
    model untouched; "consume" does the same but a read clears the tensor's
    ``raw_data`` (optionally moving the value to ``scratch``).
    """
    if mode not in ("eager", "lazy", "consume"):
        raise ValueError(f"fold_graph mode {mode!r}")
    from mconv.limits import fold_limit

    in_shapes, dyn = fixed_input_shapes(model, overrides)
    consts = _read_initializers(model.graph, mode, scratch)
    inputs = _static_inputs(model.graph, consts, in_shapes)
    prep = Prepared(
        nodes=list(model.graph.node),
        consts=consts,
        shapes=dict(in_shapes),
        dtypes={vi.name: _np_dtype(vi.type.tensor_type.elem_type) for vi in inputs},
        inputs=[vi.name for vi in inputs],
        outputs=[o.name for o in model.graph.output],
        dyn_batch=dyn,
        opset=next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 13),
        fold_limit=fold_limit(model),
    )
    for _ in range(8):
        _record_inferred(_infer(model, inputs, prep.consts, prep.nodes), prep)
        if not _fold_once(prep):
            break
    for name, v in prep.consts.items():
        prep.shapes[name] = tuple(v.shape)
        prep.dtypes[name] = v.dtype
    return prep


def _read_initializers(g: onnx.GraphProto, mode: str, scratch: Scratch | None) -> dict[str, np.ndarray]:
    """Every initializer's value; in modes "lazy" and "consume" large ones are :class:`LazyConst`."""
    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if mode != "eager" and _lazy_ok(t):
            consts[t.name] = LazyConst(t, consume=mode == "consume", scratch=scratch)  # type: ignore[assignment]
        else:
            consts[t.name] = numpy_helper.to_array(t)
    return consts


def _static_inputs(
    g: onnx.GraphProto, consts: dict[str, np.ndarray], in_shapes: dict[str, tuple[int, ...]]
) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers, with their fixed shapes."""
    return [
        helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(in_shapes[vi.name]))
        for vi in g.input
        if vi.name not in consts
    ]


def _record_inferred(inferred: onnx.ModelProto, prep: Prepared) -> None:
    """Take the static shapes and the element types shape inference found."""
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None and all(d is not None for d in dims):
            prep.shapes[vi.name] = tuple(int(d) for d in dims)
        if vi.type.tensor_type.elem_type:
            prep.dtypes[vi.name] = _np_dtype(vi.type.tensor_type.elem_type)


def _fold_once(prep: Prepared) -> bool:
    """Fold every node that can be folded now; whether any was."""
    changed = False
    kept = []
    for node in prep.nodes:
        res = _fold_node(node, prep)
        if res is None:
            kept.append(node)
            continue
        for name, v in zip(node.output, res):
            if name:
                prep.consts[name] = v
                prep.shapes[name] = tuple(v.shape)
                prep.dtypes[name] = v.dtype
        changed = True
    prep.nodes = kept
    return changed


def _fold_node(node: onnx.NodeProto, prep: Prepared) -> list[np.ndarray | None] | None:
    """The values of ``node``'s outputs, or None when it stays a node (recording
    in ``prep.too_big`` a node whose output would exceed the fold limit)."""
    if node.op_type not in ("Shape", "Size", "Constant") and _all_const(node, prep.consts):
        size = folded_nbytes(node, prep.consts, prep.shapes, prep.dtypes)
        if size is None or size > prep.fold_limit:
            prep.too_big[node.output[0]] = size
            return None
    # CastLike of a constant needs only the type of its second input
    if node.op_type == "CastLike" and node.input[0] in prep.consts and node.input[1] in prep.dtypes:
        return [np.asarray(value_of(prep.consts[node.input[0]])).astype(prep.dtypes[node.input[1]])]
    vals = _foldable(node, prep.consts, prep.shapes)
    if vals is None:
        return None
    try:
        if node.op_type == "Shape":
            return [_shape_op(node, prep.shapes[node.input[0]])]
        if node.op_type == "Size":
            return [np.array(int(np.prod(prep.shapes[node.input[0]])), np.int64)]
        if node.op_type == "Constant":
            return [_constant(node)]
        return evaluate_constant(node, vals, prep.opset)
    except Exception:  # not foldable here; the rule table decides
        return None


def _all_const(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    return bool(node.input) and all(not x or x in consts for x in node.input)


def folded_nbytes(
    node: onnx.NodeProto,
    consts: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, np.dtype],
) -> int | None:
    """Bytes folding ``node`` would allocate, computed before evaluating it (None: unbounded)."""
    from mconv.passes.sizes import output_nbytes

    def shape(name: str) -> tuple[int, ...] | None:
        v = consts.get(name)
        return tuple(v.shape) if v is not None else shapes.get(name)

    def small(name: str) -> np.ndarray | None:
        v = consts.get(name)
        return None if v is None or v.size > (1 << 16) else value_of(v)

    def itemsize(name: str) -> int:
        v = consts.get(name)
        if v is not None:
            return v.dtype.itemsize
        return dtypes[name].itemsize if name in dtypes else 0

    return output_nbytes(node, shape, small, itemsize, shapes.get)


def _foldable(
    node: onnx.NodeProto, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> list[np.ndarray | None] | None:
    if not is_foldable(node, keep_structure=False):  # the writer folds control flow and Q/DQ
        return None
    if node.op_type in ("Shape", "Size"):
        return [] if node.input[0] in shapes else None
    if node.op_type == "Constant":
        return []
    if not node.input:
        return None
    vals: list[np.ndarray | None] = []
    for name in node.input:
        if not name:
            vals.append(None)
        elif name in consts:
            vals.append(value_of(consts[name]))
        else:
            return None
    return vals


def _shape_op(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start = attrs.get("start", 0)
    end = attrs.get("end")
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _constant(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    v = helper.get_attribute_value(a)
    if a.name == "value":
        return numpy_helper.to_array(v)
    if a.name in ("value_float", "value_int"):
        return np.array(v, dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.array(v, dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise ValueError(f"Constant attribute {a.name} is not foldable")
