"""ONNX -> ncnn: fold the graph, lower every node through the rule table, optimize the
ncnn graph, insert Split layers, and serialize ``.param``/``.bin``.

:func:`lower_model` does everything in memory (used by ``preflight`` and
``write``); :func:`write_files` writes atomically only once lowering succeeded,
so an unsupported op or a refused batch leaves nothing on disk.

Memory (models with GBs of weights): ``mode="dry"`` (preflight) reads large
initializers only as zeros of their shape and drops large weight buffers as soon
as a node is lowered, so checking a model costs little beyond the model itself;
``mode="consume"`` (write) reads each large initializer when its first consumer
is lowered, clears its ``raw_data`` in the model, and moves values and weight
buffers to a scratch file beside the output, so that the ONNX model, the lowered
graph and the ``.bin`` never all sit in memory at once. The bytes written are
the same in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from mconv.errors import ConversionError, UnsupportedOpsError
from mconv.targets.ncnn import optimize
from mconv.targets.ncnn.fold import LAZY_BYTES, LazyConst, Prepared, Scratch, fold_graph
from mconv.targets.ncnn.fuse import fuse_patterns
from mconv.targets.ncnn.ir import Layer, NcnnGraph, drop_pages, mapped_base, sanitize
from mconv.targets.ncnn.lower import (
    Ctx,
    Node,
    NotLowerable,
    Tensor,
    attrs_of,
    default_keep,
    shape_params,
)
from mconv.targets.ncnn.registry import rules
from mconv.targets.ncnn.token_ids import lower_combined, plan_ids

# Inputs ncnn can take: it computes in float32 only.
_FLOAT_KINDS = ("f",)
_INT_KINDS = ("i", "u")


# ncnn's Net::forward_layer recurses once per layer along the path to the
# extracted blob: a ReLU chain crashed the runtime (SIGSEGV) past 47,251 layers
# on an 8 MiB stack (measured with the 1.0.20261020 wheel, bisected to +-400).
# Refused above this, which leaves room for heavier layers' frames and the
# caller's own stack.
MAX_DEPTH = 32_768

# In "dry" mode, initializers this large are lowered as zeros (never read).
PLACEHOLDER_BYTES = 64 << 20
# Ops whose rule stores constant input 1 (2-D) transposed (see _read_transposed).
_TRANSPOSED_B = ("MatMul", "MconvLinear")


@dataclass
class Lowered:
    """The result of lowering: the ncnn graph and the I/O description for ``meta``."""

    graph: NcnnGraph
    meta: dict = field(default_factory=dict)
    prep: Prepared | None = None


def supported_ops() -> set[str]:
    return set(rules())


def _node_name(node: onnx.NodeProto, i: int) -> str:
    return sanitize(node.name, f"{node.op_type}_{i}") if node.name else f"{node.op_type}_{i}"


def lower_model(
    model: onnx.ModelProto,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    optimize_graph: bool = True,
    mode: str = "eager",
    scratch: Scratch | None = None,
    precision: str = "fp32",
) -> Lowered:
    """Lower ``model`` to an in-memory ncnn graph.

    ``precision`` lets rules pick the layer that runs best at that precision (an
    INT8 build keeps matrix products over rows in Gemm, whose INT8 path is fast).

    ``mode``: "eager" reads every initializer up front; "dry" (checks only: the
    weights of the result are not the model's) never copies large ones and
    leaves the model as it was; "consume" (writing) reads each large one when
    needed and clears its ``raw_data`` in ``model``, which must not be used
    afterwards; with ``scratch`` large values and weight buffers live in that
    file instead of memory (see the module docstring).

    Raises:
        UnsupportedOpsError: some nodes have no rule or a form no rule handles
            (all of them are collected first).
        ConversionError: the model cannot be represented (batch > 1, unknown
            shapes, non-float inputs), naming the tensor or node.
    """
    if mode not in ("eager", "dry", "consume"):
        raise ValueError(f"lower_model mode {mode!r}")
    table = rules()
    prep = fold_graph(
        model,
        input_shapes,
        mode={"eager": "eager", "dry": "lazy", "consume": "consume"}[mode],
        scratch=scratch if mode == "consume" else None,
    )
    nodes = fuse_patterns(prep)
    lazy = {k: v for k, v in prep.consts.items() if isinstance(v, LazyConst)}
    uses = _lazy_uses(nodes, prep.outputs, lazy)
    spill = scratch if mode == "consume" else None
    ctx = Ctx(prep)
    ctx.precision = precision
    inputs_meta, handled = _lower_inputs(ctx, nodes)
    _lower_nodes(ctx, nodes, table, handled, _LazyReads(lazy, uses, mode, spill))
    tail_from = len(ctx.g.layers)
    outputs_meta = _lower_outputs(ctx)
    _shed(ctx.g.layers[tail_from:], mode, spill)
    if spill is not None:
        spill.restore()
    return _finish(ctx, inputs_meta, outputs_meta, optimize_graph)


@dataclass
class _LazyReads:
    """How the node loop opens lazy constants and sheds large weights (see the module docstring)."""

    lazy: dict[str, LazyConst]
    uses: dict[str, int]  # consumers left per lazy constant
    mode: str
    spill: Scratch | None


def _lazy_uses(nodes: list[onnx.NodeProto], outputs: list[str], lazy: dict[str, LazyConst]) -> dict[str, int]:
    """Consumers of each lazy constant; those with none are released now."""
    uses: dict[str, int] = {}
    for proto in nodes:
        for x in proto.input:
            if x in lazy:
                uses[x] = uses.get(x, 0) + 1
    for o in outputs:
        if o in lazy:
            uses[o] = uses.get(o, 0) + (1 << 30)  # read again after the loop
    for k, c in lazy.items():
        if not uses.get(k):
            c.release()  # folded away (or unused)
    return uses


def _lower_inputs(ctx: Ctx, nodes: list[onnx.NodeProto]) -> tuple[list[dict], set[int]]:
    """An Input layer per graph input; their ``meta`` entries and the ids of the
    nodes already lowered with integer id inputs (token_ids)."""
    prep = ctx.prep
    inputs_meta = []
    ints = [n for n in prep.inputs if prep.dtypes.get(n, np.dtype("float32")).kind in (*_INT_KINDS, "b")]
    id_plans = plan_ids(nodes, ints, prep.consts)
    ctx.int_inputs = set(id_plans)
    handled: set[int] = set()
    for name in prep.inputs:
        shape = prep.shapes[name]
        dt = prep.dtypes.get(name, np.dtype("float32"))
        if dt.kind not in (*_FLOAT_KINDS, *_INT_KINDS, "b"):
            raise ConversionError(f"input '{name}' is {dt.name}; ncnn computes on float32, int and bool inputs only")
        try:
            keep = default_keep(shape)
        except NotLowerable as e:
            raise ConversionError(f"input '{name}': {e}") from e
        nc = tuple(shape[a] for a in keep) or (1,)
        blob = ctx.emit("Input", [], nc, shape_params(nc), out_name=name)
        # The Input layer is named like its blob, as ncnn tools do.
        ctx.g.layers[-1].name = blob
        ctx.bind(name, blob, keep, dyn_batch=name in prep.dyn_batch)
        if name in id_plans and id_plans[name].combined:
            handled |= lower_combined(ctx, id_plans[name], blob)
        feed = "int32" if name in ctx.int_inputs else "float"
        inputs_meta.append({"name": name, "blob": blob, "shape": list(shape), "dtype": dt.name, "feed": feed})
    return inputs_meta, handled


def _lower_nodes(ctx: Ctx, nodes: list[onnx.NodeProto], table: dict, handled: set[int], reads: _LazyReads) -> None:
    """Lower every node not yet ``handled``, in order.

    Raises:
        UnsupportedOpsError: every node that has no rule or that its rule refused.
    """
    unsupported: dict[str, list[str]] = {}
    failed: set[str] = set()
    for i, proto in enumerate(nodes):
        if id(proto) in handled:
            continue
        opened = _open_consts(ctx, proto, reads.lazy, reads.mode) if reads.lazy else []
        n_layers = len(ctx.g.layers)
        name = _node_name(proto, i)
        op = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}::{proto.op_type}"
        reason, missing = _lower_node(ctx, proto, name, table.get(op), failed)
        if reason is not None:
            unsupported.setdefault(op, []).append(f"{name} ({reason})" if reason else name)
        if reason is not None or missing:
            # Downstream nodes of a failure are skipped (not reported twice),
            # so the walk goes on and every unsupported node is collected.
            failed.update(o for o in proto.output if o)
            for o in proto.output:
                if o and o not in ctx.tensors:
                    ctx.tensors[o] = Tensor(o, ctx.prep.shapes.get(o, ()), np.dtype("float32"))
        if opened:
            _close_consts(ctx, opened, reads.lazy, reads.uses)
        _shed(ctx.g.layers[n_layers:], reads.mode, reads.spill)
    if unsupported:
        raise UnsupportedOpsError("ncnn", unsupported)


def _lower_node(ctx: Ctx, proto: onnx.NodeProto, name: str, fn, failed: set[str]) -> tuple[str | None, bool]:
    """Lower one node with its rule ``fn`` (None: no rule), or fold it when its inputs
    are all constant. Returns why it was not lowered ("" for no rule, None when it
    was or when an input failed upstream) and whether an input failed upstream."""
    prep = ctx.prep
    node = Node(
        proto, name, [ctx.tensors.get(x) if x else None for x in proto.input], list(proto.output), attrs_of(proto)
    )
    missing = any(x and (t is None or x in failed) for x, t in zip(proto.input, node.inputs))
    all_const = all(t is None or t.const is not None for t in node.inputs) and any(node.inputs)
    if fn is None and not (all_const and not missing and proto.domain in ("", "ai.onnx")):
        return "", missing
    if missing:
        return None, True  # an upstream failure already reported
    if any(0 in prep.shapes.get(o, (1,)) for o in proto.output if o) or any(
        t is not None and t.const is None and 0 in t.shape for t in node.inputs
    ):
        return "zero-size tensor (ncnn Mats cannot be empty)", False
    if all_const:
        # Inputs became constant during lowering (e.g. a Reshape of a
        # constant): evaluate instead of emitting layers.
        return _fold_during_lowering(ctx, proto, node, prep), False
    ctx.node = node
    try:
        fn(ctx, node)
    except NotLowerable as e:
        return str(e), False
    finally:
        ctx.node = None
    return None, False


def _lower_outputs(ctx: Ctx) -> list[dict]:
    """The ``meta`` entries of the graph outputs; a constant output gets a layer that makes it."""
    outputs_meta = []
    for name in ctx.prep.outputs:
        t = ctx.tensors.get(name)
        if t is None:
            raise ConversionError(f"graph output '{name}' is not computed by any node")
        if t.const is not None:
            keep = default_keep(t.shape)
            ctx.node = None
            blob = ctx.blob_as(t, keep)
            ctx.bind(name, blob, keep)
            t = ctx.tensors[name]
        outputs_meta.append(
            {
                "name": name,
                "blob": t.blob,
                "shape": list(t.shape),
                "dtype": np.dtype(ctx.prep.dtypes.get(name, np.float32)).name,
            }
        )
    return outputs_meta


def _finish(ctx: Ctx, inputs_meta: list[dict], outputs_meta: list[dict], optimize_graph: bool) -> Lowered:
    """Optimize the ncnn graph, insert Split layers, refuse a graph too deep to run, describe the blobs."""
    prep = ctx.prep
    out_blobs = {o["blob"] for o in outputs_meta}
    renamed: dict[str, str] = {}
    if optimize_graph:
        renamed = optimize.run_all(ctx.g, keep_blobs=out_blobs | {i["blob"] for i in inputs_meta})
    ctx.g.insert_splits()
    depth = ctx.g.depth()
    if depth > MAX_DEPTH:
        raise ConversionError(
            f"the ncnn graph is {depth} layers deep; ncnn's runtime runs layers recursively and "
            f"crashes on graphs this deep (mconv refuses above {MAX_DEPTH}): target openvino or onnx instead"
        )
    blob_map = {}
    for onnx_name, blob in ctx.blob_map.items():
        blob_map[onnx_name] = renamed.get(blob, blob)
    live = {b for layer in ctx.g.layers for b in layer.outputs}
    meta = {
        "format": "ncnn",
        "inputs": inputs_meta,
        "outputs": outputs_meta,
        "blobs": {k: (v if v in live else None) for k, v in sorted(blob_map.items())},
        "dyn_batch_inputs": sorted(prep.dyn_batch),
    }
    return Lowered(ctx.g, meta, prep)


def _fold_during_lowering(ctx: Ctx, proto: onnx.NodeProto, node: Node, prep: Prepared) -> str | None:
    """Evaluate a node whose inputs are all constant; the reason it cannot be, or None.

    A node whose output would exceed the fold limit is reported, never evaluated:
    ncnn has no layer that makes such a tensor at run time either.
    """
    from mconv.limits import human
    from mconv.targets.ncnn.fold import evaluate_constant, folded_nbytes

    consts = {x: t.const for x, t in zip(proto.input, node.inputs) if x and t is not None}
    size = folded_nbytes(proto, consts, prep.shapes, prep.dtypes)
    if size is None or size > prep.fold_limit:
        what = "of unbounded size" if size is None else f"of {human(size)}"
        return (
            f"constant output {what} above the fold limit {human(prep.fold_limit)}; "
            "raise it with --fold-limit if the model really needs it"
        )
    try:
        vals = evaluate_constant(proto, [t.const if t is not None else None for t in node.inputs], prep.opset)
    except Exception as e:
        return f"constant evaluation failed: {e}"
    for o, v in zip(proto.output, vals):
        if o:
            ctx.bind_const(o, v)
            prep.shapes[o] = tuple(v.shape)
    return None


def _open_consts(ctx: Ctx, proto: onnx.NodeProto, lazy: dict[str, LazyConst], mode: str) -> list[tuple]:
    """Give the node's rule arrays for its lazy constant inputs."""
    opened: list[tuple] = []
    for k, x in enumerate(proto.input):
        c = lazy.get(x)
        t = ctx.tensors.get(x) if c is not None else None
        if t is None or t.const is not c or any(o[0] == x for o in opened):
            continue
        if mode == "dry":
            v = c.placeholder() if c.nbytes >= PLACEHOLDER_BYTES else c.value()
        else:
            v = c.value(transposed=_read_transposed(ctx, proto, k, c))
        ctx.tensors[x] = replace(t, const=v)
        opened.append((x, t, v))
    return opened


def _read_transposed(ctx: Ctx, proto: onnx.NodeProto, k: int, c: LazyConst) -> bool:
    """MatMul (or the fused MatMul + bias) by a constant 2-D B becomes an
    InnerProduct/Gemm storing B.T contiguously (rules_linear.inner_product): B kept
    in Fortran order makes that a view instead of a copy. Only a layout hint: the
    values, hence the bytes written, are the same either way."""
    if proto.op_type not in _TRANSPOSED_B or proto.domain not in ("", "ai.onnx") or k != 1 or c.ndim != 2:
        return False
    a = ctx.tensors.get(proto.input[0])
    return a is not None and a.const is None


def _close_consts(ctx: Ctx, opened: list[tuple], lazy: dict[str, LazyConst], uses: dict[str, int]) -> None:
    """Put the lazy constants back; release those whose last consumer this was."""
    for x, t, v in opened:
        cur = ctx.tensors.get(x)
        if cur is not None and cur.const is v:
            ctx.tensors[x] = t
        drop_pages(v)
        uses[x] -= 1
        if uses[x] <= 0:
            lazy[x].release()


def _shed(layers: list[Layer], mode: str, spill: Scratch | None) -> None:
    """Large weight buffers of freshly lowered layers: zeros in "dry" mode (nothing
    is written), moved to the scratch file in "consume" mode."""
    if mode == "eager":
        return
    for layer in layers:
        for w in layer.weights:
            d = w.data
            if not isinstance(d, np.ndarray) or d.nbytes < LAZY_BYTES:
                continue
            if mode == "dry":
                w.data = np.zeros(d.shape, d.dtype)
            elif spill is not None and mapped_base(d) is None:
                spill.park(w)


def write_files(lowered: Lowered, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Serialize atomically to ``<stem>.param`` and ``<stem>.bin`` in ``out_dir``
    (the ``.bin`` streamed weight by weight)."""
    from mconv.fsutil import atomic_path, write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    param = out_dir / f"{stem}.param"
    binf = out_dir / f"{stem}.bin"
    text = lowered.graph.to_param()
    with atomic_path(binf) as tmp, open(tmp, "wb") as f:
        lowered.graph.write_bin(f)
    write_text_atomic(param, text)
    return param, binf
