"""Constant folding in the project's own code (no onnxsim needed).

Cases rewritten:
1. ``Shape``/``Size`` of a tensor whose shape is fully static -> constant.
2. A deterministic node whose inputs are all constants -> its outputs become
   initializers (ConstantOfShape weights, shape arithmetic, Cast, ...).
3. ``Constant`` nodes -> initializers.
Nodes are evaluated by :func:`mconv.passes.evaluate.evaluate_node` (numpy
kernels for shape arithmetic, onnx's reference evaluator for the rest); which
ops are never folded is :func:`mconv.passes.evaluate.is_foldable`'s. A node whose outputs would exceed the fold limit
(``max_folded_bytes``, by default :func:`mconv.limits.fold_limit` of the model),
computed before it runs (:mod:`mconv.passes.sizes`), is left unfolded and never
evaluated; so is every node once the tensors folded by one run reach twice
the limit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from mconv.passes.base import Pass, PassResult
from mconv.passes.evaluate import evaluate_node, is_foldable
from mconv.passes.graph import attr, constant_node_value, static_shapes
from mconv.passes.sizes import output_nbytes

# Constant inputs read to size a node (shape vectors, repeats, pads) are small.
_SHAPE_INPUT_ELEMENTS = 1 << 16


class _Constants:
    """What one run knows about a graph's constants: initializers (converted on
    first read), folded outputs, and the static shapes and element types of the rest."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.values: dict[str, np.ndarray] = {}
        self.graph_inputs = {i.name for i in g.input} - {t.name for t in g.initializer}
        self.shapes = static_shapes(model)
        self.inits = {t.name: t for t in g.initializer}
        self.elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}

    def _init(self, name: str) -> onnx.TensorProto | None:
        t = self.inits.get(name)
        return t if t is not None and name not in self.graph_inputs else None

    def is_const(self, name: str) -> bool:
        return name == "" or name in self.values or self._init(name) is not None

    def value(self, name: str) -> np.ndarray | None:
        if name in self.values:
            return self.values[name]
        t = self._init(name)
        if t is None:
            return None
        self.values[name] = numpy_helper.to_array(t)
        return self.values[name]

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        if name in self.values:
            return tuple(self.values[name].shape)
        t = self._init(name)
        return tuple(int(d) for d in t.dims) if t is not None else self.shapes.get(name)

    def small_value(self, name: str) -> np.ndarray | None:
        """The value of a constant small enough to read for sizing a node (shape vectors, pads)."""
        s = self.shape_of(name)
        if s is None or int(np.prod(s, dtype=np.int64)) > _SHAPE_INPUT_ELEMENTS:
            return None
        return self.value(name)

    def itemsize(self, name: str) -> int:
        if name in self.values:
            return self.values[name].itemsize
        t = self.inits.get(name)
        et = t.data_type if t is not None else self.elem_types.get(name, 0)
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(et)).itemsize if et else 0
        except Exception:
            return 0


@dataclass
class _FoldRun:
    """One run's limits and tallies."""

    limit: int
    budget: int
    keep: list[onnx.NodeProto] = field(default_factory=list)
    new_inits: list[str] = field(default_factory=list)
    folded: int = 0
    failures: list[str] = field(default_factory=list)
    too_big: list[str] = field(default_factory=list)


class FoldConstantsPass(Pass):
    """Fold Shape/Size of static tensors and nodes whose inputs are all constant."""

    name = "fold_constants"

    def __init__(self, max_folded_bytes: int | None = None) -> None:
        self.max_folded_bytes = max_folded_bytes

    def call(self, model: onnx.ModelProto) -> PassResult:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        known = _Constants(model)
        limit = self._limit(model)
        run = _FoldRun(limit=limit, budget=2 * limit)
        for node in model.graph.node:
            out = _folded_outputs(node, known, run, opset) if self.foldable(node) else None
            if out is None or len(out) < len([o for o in node.output if o]):
                run.keep.append(node)
                continue
            for name, arr in zip(node.output, out):
                if name:
                    known.values[name] = np.asarray(arr)
                    run.new_inits.append(name)
            run.folded += 1
        return _rewrite(model, known, run)

    def foldable(self, node: onnx.NodeProto) -> bool:
        return is_foldable(node)

    def _limit(self, model: onnx.ModelProto) -> int:
        if self.max_folded_bytes is not None:
            return self.max_folded_bytes
        from mconv.limits import fold_limit

        return fold_limit(model)


class FoldQuantizedWeightsPass(FoldConstantsPass):
    """Fold constant Quantize/DequantizeLinear (int8 weights) to float initializers."""

    # For targets whose converter takes float weights only or reads Q/DQ weights wrongly
    # (MNN expands them to float anyway, and reads a dequantized BatchNormalization scale
    # wrongly). Q/DQ on activations stays: it is not constant.
    name = "fold_quantized_weights"

    def foldable(self, node: onnx.NodeProto) -> bool:
        return node.op_type in ("QuantizeLinear", "DequantizeLinear") and is_foldable(node, keep_structure=False)

    def call(self, model: onnx.ModelProto) -> PassResult:
        # The int8 weights it leaves unread go with eliminate_dead_nodes after it.
        if not any(self.foldable(n) for n in model.graph.node):  # no Q/DQ: nothing to look at
            return PassResult(model, False)
        return super().call(model)


def _folded_outputs(node: onnx.NodeProto, known: _Constants, run: _FoldRun, opset: int) -> list | None:
    """The values of a foldable node's outputs (cases 1-3), or None to keep the node."""
    if node.op_type == "Constant":
        v = constant_node_value(node)
        return None if v is None else [v]
    if node.op_type in ("Shape", "Size") and node.input[0] in known.shapes:
        return [_shape_or_size(node, known.shapes[node.input[0]])]
    if node.input and all(known.is_const(i) for i in node.input):
        return _evaluate_within_limit(node, known, run, opset)
    return None


def _shape_or_size(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    start, end = attr(node, "start", 0), attr(node, "end", None)
    return np.array(shape[start:end], np.int64)


def _evaluate_within_limit(
    node: onnx.NodeProto, known: _Constants, run: _FoldRun, opset: int
) -> list[np.ndarray | None] | None:
    """Evaluate a node of constant inputs unless its outputs, sized before it runs,
    exceed the fold limit or the run's budget; None when it is left unfolded."""
    size = output_nbytes(node, known.shape_of, known.small_value, known.itemsize, known.shapes.get)
    if size is None or size > run.limit or size > run.budget:
        run.too_big.append(f"{node.name or node.op_type} ({_size_text(size)})")
        return None
    run.budget -= size
    arrs = [known.value(i) if i else None for i in node.input]
    try:
        out = evaluate_node(node, arrs, opset)
    except Exception as e:  # leave the node, say why
        run.failures.append(f"{node.name or node.op_type}: {type(e).__name__}")
        return None
    if sum(np.asarray(o).nbytes for o in out if o is not None) > run.limit:
        return None
    return out


def _rewrite(model: onnx.ModelProto, known: _Constants, run: _FoldRun) -> PassResult:
    """Replace the graph's nodes by the kept ones and add the folded tensors still read."""
    g = model.graph
    notes = []
    if run.too_big:
        from mconv.limits import human

        notes.append(
            f"left {len(run.too_big)} node(s) unfolded above the fold limit {human(run.limit)} "
            f"(--fold-limit): " + ", ".join(run.too_big[:5])
        )
    if not run.folded:
        return PassResult(model, False, notes)
    # Only materialise folded tensors something still reads.
    used = {i for n in run.keep for i in n.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(run.keep)
    for name in run.new_inits:
        if name in used:
            _add_initializer(g, name, known.values[name])
    notes.insert(0, f"folded {run.folded} node(s)")
    if run.failures:
        notes.append(f"left {len(run.failures)} node(s) unfolded: " + ", ".join(run.failures[:5]))
    return PassResult(model, True, notes)


_RAW_KINDS = "biuf"


def _add_initializer(g: onnx.GraphProto, name: str, arr: np.ndarray) -> None:
    """Append ``arr`` as an initializer, copying its bytes once (from_array then
    ``extend`` copied them three times: 1.8 s of vgg19's 548 MB of folded weights)."""
    if sys.byteorder == "little" and arr.dtype.kind in _RAW_KINDS and arr.dtype.itemsize in (1, 2, 4, 8):
        try:
            dtype = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        except Exception:
            dtype = None
        if dtype:
            t = g.initializer.add()
            t.name, t.data_type = name, dtype
            t.dims.extend(int(d) for d in arr.shape)
            t.raw_data = arr.tobytes()
            return
    g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))


def _size_text(size: int | None) -> str:
    from mconv.limits import human

    return "size unknown" if size is None else human(size)
