"""ONNX -> ncnn: prepare, lower every node through the rule table, optimize the
ncnn graph, insert Split layers, and serialize ``.param``/``.bin``.

:func:`lower_model` does everything in memory (used by ``preflight`` and
``write``); :func:`write_files` writes atomically only once lowering succeeded,
so an unsupported op or a refused batch leaves nothing on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from mconv.errors import ConversionError, UnsupportedOpsError
from mconv.targets.ncnn import optimize
from mconv.targets.ncnn.fold import Prepared, prepare
from mconv.targets.ncnn.fuse import fuse_patterns
from mconv.targets.ncnn.ir import NcnnGraph, sanitize
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

# Inputs ncnn can take: it computes in float32 only.
_FLOAT_KINDS = ("f",)


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
) -> Lowered:
    """Lower ``model`` to an in-memory ncnn graph.

    Raises:
        UnsupportedOpsError: some nodes have no rule or a form no rule handles
            (all of them are collected first).
        ConversionError: the model cannot be represented (batch > 1, unknown
            shapes, non-float inputs), naming the tensor or node.
    """
    table = rules()
    prep = prepare(model, input_shapes)
    nodes = fuse_patterns(prep)
    ctx = Ctx(prep)
    inputs_meta = []
    for name in prep.inputs:
        shape = prep.shapes[name]
        dt = prep.dtypes.get(name, np.dtype("float32"))
        if dt.kind not in _FLOAT_KINDS:
            raise ConversionError(
                f"input '{name}' is {dt.name}; ncnn computes in float32 only, so the model must take float inputs"
            )
        try:
            keep = default_keep(shape)
        except NotLowerable as e:
            raise ConversionError(f"input '{name}': {e}") from e
        nc = tuple(shape[a] for a in keep) or (1,)
        blob = ctx.emit("Input", [], nc, shape_params(nc), out_name=name)
        # The Input layer is named like its blob, as ncnn tools do.
        ctx.g.layers[-1].name = blob
        ctx.bind(name, blob, keep, dyn_batch=name in prep.dyn_batch)
        inputs_meta.append({"name": name, "blob": blob, "shape": list(shape), "dtype": dt.name})

    unsupported: dict[str, list[str]] = {}
    failed: set[str] = set()
    for i, proto in enumerate(nodes):
        name = _node_name(proto, i)
        op = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}::{proto.op_type}"
        node = Node(
            proto,
            name,
            [ctx.tensors.get(x) if x else None for x in proto.input],
            list(proto.output),
            attrs_of(proto),
        )
        missing = [x for x, t in zip(proto.input, node.inputs) if x and (t is None or x in failed)]
        fn = table.get(op)
        reason = None
        if fn is None:
            reason = ""
        elif missing:
            reason = None  # an upstream failure already reported
        elif any(0 in prep.shapes.get(o, (1,)) for o in proto.output if o) or any(
            t is not None and t.const is None and 0 in t.shape for t in node.inputs
        ):
            reason = "zero-size tensor (ncnn Mats cannot be empty)"
        elif all(t is None or t.const is not None for t in node.inputs) and any(node.inputs):
            # Inputs became constant during lowering (e.g. a Reshape of a
            # constant): evaluate instead of emitting layers.
            from mconv.targets.ncnn.fold import _eval_node

            try:
                vals = _eval_node(proto, [t.const if t is not None else None for t in node.inputs],
                                  prep.opset)  # fmt: skip
                for o, v in zip(proto.output, vals):
                    if o:
                        ctx.bind_const(o, v)
                        prep.shapes[o] = tuple(v.shape)
            except Exception as e:
                reason = f"constant evaluation failed: {e}"
        else:
            ctx.node = node
            try:
                fn(ctx, node)
            except NotLowerable as e:
                reason = str(e)
            finally:
                ctx.node = None
        if reason is not None:
            unsupported.setdefault(op, []).append(f"{name} ({reason})" if reason else name)
        if reason is not None or missing:
            # Downstream nodes of a failure are skipped (not reported twice),
            # so the walk goes on and every unsupported node is collected.
            failed.update(o for o in proto.output if o)
            for o in proto.output:
                if o and o not in ctx.tensors:
                    ctx.tensors[o] = Tensor(o, prep.shapes.get(o, ()), np.dtype("float32"))
    if unsupported:
        raise UnsupportedOpsError("ncnn", unsupported)

    outputs_meta = []
    for name in prep.outputs:
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
                "dtype": np.dtype(prep.dtypes.get(name, np.float32)).name,
            }
        )
    out_blobs = {o["blob"] for o in outputs_meta}
    renamed: dict[str, str] = {}
    if optimize_graph:
        renamed = optimize.run_all(ctx.g, keep_blobs=out_blobs | {i["blob"] for i in inputs_meta})
    ctx.g.insert_splits()
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


def write_files(lowered: Lowered, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Serialize atomically to ``<stem>.param`` and ``<stem>.bin`` in ``out_dir``."""
    from mconv.fsutil import write_bytes_atomic, write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    param = out_dir / f"{stem}.param"
    binf = out_dir / f"{stem}.bin"
    text = lowered.graph.to_param()
    data = lowered.graph.to_bin()
    write_bytes_atomic(binf, data)
    write_text_atomic(param, text)
    return param, binf
