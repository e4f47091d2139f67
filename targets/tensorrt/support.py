"""Preflight for the TensorRT target: what TensorRT's ONNX parser will accept, checked
without TensorRT.

The op table (``trt_ops.json``) is transcribed from onnx-tensorrt's
``docs/operators.md``; its ``source`` block names the repository, tag and commit.
The checks, each reported with the node or input names it concerns:

1. ``unsupported-op``: the table marks the op "N" (the parser rejects it).
2. ``needs-plugin``: an op absent from the table or in a custom domain is looked up
   in TensorRT's plugin registry by op type (error unless plugin libraries are given);
   ops the parser itself implements through a shipped plugin (RoiAlign, ScatterElements
   with a reduction) are warnings.
3. ``op-restriction``: attribute or input restrictions from the table's
   "Restrictions" column that are decidable from the graph (``axes`` not an
   initializer, MaxPool ``Indices`` used, cubic Resize, ...).
4. ``int64-initializers`` / ``double-initializers``: weights TensorRT will cast.
5. ``no-profile`` / ``bad-profile``: dynamic input dims without a ``--shape`` profile,
   and profiles that do not fit the graph's inputs.
6. ``opset``: an opset outside the range the table covers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from mconv.errors import ConversionError, UsageError
from mconv.graphinfo import TensorInfo, graph_inputs, opset
from mconv.specs import ShapeProfile, parse_profile
from mconv.targets.base import Finding

TABLE_PATH = Path(__file__).with_name("trt_ops.json")

SEVERITIES = ("error", "warning", "info")
# Blocking findings that the user fixes with an option rather than by changing the model.
USAGE_CODES = frozenset({"no-profile", "bad-profile"})

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@functools.cache
def load_table() -> dict[str, Any]:
    """The op support table with its ``source`` block."""
    return json.loads(TABLE_PATH.read_text(encoding="utf-8"))


def supported_ops() -> set[str]:
    return {op for op, e in load_table()["ops"].items() if e["supported"]}


# ---------------------------------------------------------------- shape profiles


def normalize_profiles(raw: Any) -> list[list[ShapeProfile]]:
    """Turn the ``profiles`` option into one list of ShapeProfile per optimization
    profile. Accepts None, a flat list (one profile), a list of lists, and
    ``NAME:MIN:OPT:MAX`` strings in place of ShapeProfile objects."""
    if not raw:
        return []
    items = list(raw)
    if all(isinstance(p, (ShapeProfile, str)) for p in items):
        items = [items]
    out: list[list[ShapeProfile]] = []
    for group in items:
        if isinstance(group, (ShapeProfile, str)):
            group = [group]
        out.append([parse_profile(p) if isinstance(p, str) else p for p in group])
    return [g for g in out if g]


def check_profiles(inputs: Sequence[TensorInfo], profiles: list[list[ShapeProfile]]) -> list[Finding]:
    """Every dynamic input needs a shape range in every profile, and every range must fit."""
    findings: list[Finding] = []
    by_name = {i.name: i for i in inputs}
    dynamic = [i for i in inputs if not i.is_static]
    unknown_rank = [i.name for i in dynamic if i.shape is None]
    if unknown_rank:
        findings.append(
            Finding(
                "error",
                "no-profile",
                f"input(s) {unknown_rank} have an unknown rank; TensorRT needs the rank of every "
                "input: re-export with shapes or fix them with --input NAME:SHAPE",
                unknown_rank,
            )
        )
    dynamic = [i for i in dynamic if i.shape is not None]
    if dynamic and not profiles:
        names = [i.name for i in dynamic]
        example = " ".join(f"--shape {_example_profile(i)}" for i in dynamic)
        findings.append(
            Finding(
                "error",
                "no-profile",
                f"dynamic input(s) {_describe(dynamic)} have no shape profile; TensorRT needs a "
                f"MIN:OPT:MAX range for each, e.g. {example}",
                names,
            )
        )
        return findings
    for k, group in enumerate(profiles):
        label = f"profile {k}" if len(profiles) > 1 else "the --shape profile"
        findings.extend(_check_profile(label, group, by_name, dynamic))
    return findings


def _check_profile(
    label: str, group: list[ShapeProfile], by_name: dict[str, TensorInfo], dynamic: list[TensorInfo]
) -> list[Finding]:
    """One profile: each range names an input once and fits it; every dynamic input has one."""
    findings: list[Finding] = []
    seen: set[str] = set()
    for p in group:
        if p.name in seen:
            findings.append(Finding("error", "bad-profile", f"{label} gives input '{p.name}' twice", [p.name]))
        seen.add(p.name)
        info = by_name.get(p.name)
        if info is None:
            findings.append(
                Finding(
                    "error",
                    "bad-profile",
                    f"--shape names '{p.name}', which is not an input of the model; its inputs are {sorted(by_name)}",
                    [p.name],
                )
            )
            continue
        problem = _profile_mismatch(info, p)
        if problem:
            findings.append(Finding("error", "bad-profile", f"{label}: {problem}", [p.name]))
    missing = [i for i in dynamic if i.name not in seen]
    if missing:
        findings.append(
            Finding(
                "error",
                "no-profile",
                f"{label} has no range for dynamic input(s) {_describe(missing)}; every "
                "profile must cover every dynamic input, e.g. "
                + " ".join(f"--shape {_example_profile(i)}" for i in missing),
                [i.name for i in missing],
            )
        )
    return findings


def _profile_mismatch(info: TensorInfo, p: ShapeProfile) -> str | None:
    if info.shape is None:
        return None
    if len(p.min) != len(info.shape):
        return (
            f"--shape for '{p.name}' has rank {len(p.min)} but the input has rank {len(info.shape)} {_dims(info.shape)}"
        )
    for axis, d in enumerate(info.shape):
        if isinstance(d, int) and not (p.min[axis] == p.opt[axis] == p.max[axis] == d):
            return f"--shape for '{p.name}' varies axis {axis}, which is fixed at {d} in the model {_dims(info.shape)}"
    return None


def _dims(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _describe(infos: Sequence[TensorInfo]) -> str:
    return ", ".join(f"'{i.name}' {_dims(i.shape or ())}" for i in infos)


def _example_profile(info: TensorInfo) -> str:
    def pick(d: Any, v: int) -> str:
        return str(d) if isinstance(d, int) else str(v)

    shape = info.shape or ()
    lo = "x".join(pick(d, 1) for d in shape)
    opt = "x".join(pick(d, 8 if i == 0 else 224) for i, d in enumerate(shape))
    hi = "x".join(pick(d, 32 if i == 0 else 512) for i, d in enumerate(shape))
    return f"{info.name}:{lo}:{opt}:{hi}"


# ---------------------------------------------------------------- graph walk


@dataclass
class _Ctx:
    constants: set[str]
    values: dict[str, np.ndarray]
    int32: set[str]


def _walk(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node, subgraphs (If/Loop/Scan bodies) included, with a display name."""
    for i, node in enumerate(graph.node):
        name = prefix + (node.name or f"{node.op_type}_{i}")
        yield name, node
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _walk(sub, f"{name}/{attr.name}/")


def _constants(model: onnx.ModelProto) -> _Ctx:
    values: dict[str, np.ndarray] = {}
    names: set[str] = set()
    int32: set[str] = set()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for t in g.initializer:
            names.add(t.name)
            if t.data_type == onnx.TensorProto.INT32:
                int32.add(t.name)
            if _numel(t) <= 64:
                values[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                names.update(n.output)
                for a in n.attribute:
                    if a.name == "value" and _numel(a.t) <= 64:
                        values[n.output[0]] = numpy_helper.to_array(a.t)
            for a in n.attribute:
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
    return _Ctx(names, values, int32)


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if t.dims else 1


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _input(node: onnx.NodeProto, idx: int) -> str:
    return node.input[idx] if len(node.input) > idx else ""


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# ---------------------------------------------------------------- restrictions
# Each rule returns a reason when the node breaks a restriction the parser enforces.

Rule = Callable[[onnx.NodeProto, _Ctx], "str | None"]


def _needs_constant(idx: int, what: str) -> Rule:
    def rule(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
        name = _input(node, idx)
        if name and name not in ctx.constants:
            return (
                f"`{what}` comes from a computed tensor '{name}' but must be an "
                "initializer; fold constants first (the default passes do)"
            )
        return None

    return rule


def _maxpool(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "the `Indices` output is not supported"
    return _pool(node, ctx)


def _pool(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    dil = _attr(node, "dilations")
    if dil and any(d != 1 for d in dil):
        return f"`dilations` {list(dil)} must be empty or all ones"
    return None


def _resize(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    mode = _str(_attr(node, "mode", "nearest"))
    if mode not in ("nearest", "linear"):
        return f"mode '{mode}' is not supported (only nearest and linear)"
    if _attr(node, "antialias", 0):
        return "antialiasing is not supported"
    ctm = _str(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if ctm not in (
        "half_pixel",
        "pytorch_half_pixel",
        "tf_half_pixel_for_nn",
        "asymmetric",
        "align_corners",
    ):
        return f"coordinate_transformation_mode '{ctm}' is not supported"
    policy = _str(_attr(node, "keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        return f"keep_aspect_ratio_policy '{policy}' is not supported (only stretch)"
    return None


def _topk(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    if _attr(node, "sorted", 1) != 1:
        return "`sorted` must be 1"
    k = ctx.values.get(_input(node, 1))
    if k is not None and k.size and int(k.ravel()[0]) >= 3840:
        return f"K = {int(k.ravel()[0])} must be less than 3840"
    return None


def _scatternd(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    if _attr(node, "reduction") is not None:
        return "the `reduction` attribute is not supported (the parser rejects it, even 'none')"
    return None


def _layernorm(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    if any(node.output[1:]):
        return "only the first output `Y` is supported (Mean/InvStdDev are used)"
    return None


def _zero_point(idx: int) -> Rule:
    def rule(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
        zp = ctx.values.get(_input(node, idx))
        if zp is not None and np.any(zp != 0):
            return "the zero point must be 0 (quantize symmetrically)"
        return None

    return rule


def _dequantize(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    if ctx.int32.intersection(node.input[:1]):
        return "an INT32 input (a quantized bias) is not supported; keep biases in float"
    return _zero_point(2)(node, ctx)


def _lstm(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    if _attr(node, "input_forget", 0):
        return "`input_forget` must be 0"
    if _attr(node, "layout", 0):
        return "`layout` must be 0"
    return None


def _constant(node: onnx.NodeProto, ctx: _Ctx) -> str | None:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return f"attribute `{bad[0]}` is not supported" if bad else None


_REDUCE = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
)

RULES: dict[str, Rule] = {
    **{op: _needs_constant(1, "axes") for op in _REDUCE},
    "Slice": _needs_constant(3, "axes"),
    "Squeeze": _needs_constant(1, "axes"),
    "Unsqueeze": _needs_constant(1, "axes"),
    "Pad": _needs_constant(3, "axes"),
    "CumSum": _needs_constant(1, "axis"),
    "OneHot": _needs_constant(1, "depth"),
    "MaxPool": _maxpool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "Resize": _resize,
    "TopK": _topk,
    "ScatterND": _scatternd,
    "LayerNormalization": _layernorm,
    "QuantizeLinear": _zero_point(2),
    "DequantizeLinear": _dequantize,
    "LSTM": _lstm,
    "Constant": _constant,
}


# ---------------------------------------------------------------- the report


@dataclass
class _OpCensus:
    """Node names by what TensorRT's parser makes of their op."""

    unsupported: dict[str, list[str]] = field(default_factory=dict)
    unknown: dict[str, list[str]] = field(default_factory=dict)  # not built in: a plugin's
    shipped: dict[str, list[str]] = field(default_factory=dict)  # built with a plugin TensorRT ships
    restricted: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (op, reason)


def check_ops(model: onnx.ModelProto, *, plugins: Sequence[str] = ()) -> list[Finding]:
    """Unsupported ops, ops that need plugins, and violated restrictions."""
    table = load_table()
    census = _op_census(model, table["ops"])
    return [
        *_unsupported_findings(census.unsupported, table),
        *_unknown_op_findings(census.unknown, plugins),
        *_shipped_plugin_findings(census.shipped, table),
        *(
            Finding("error", "op-restriction", f"{op}: {reason}", names)
            for (op, reason), names in sorted(census.restricted.items())
        ),
    ]


def _op_census(model: onnx.ModelProto, ops: dict[str, Any]) -> _OpCensus:
    ctx = _constants(model)
    census = _OpCensus()
    for name, node in _walk(model.graph):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            census.unknown.setdefault(f"{node.domain}::{op}", []).append(name)
            continue
        entry = ops.get(op)
        if entry is None:
            census.unknown.setdefault(op, []).append(name)
            continue
        if not entry["supported"]:
            census.unsupported.setdefault(op, []).append(name)
            continue
        if op == "RoiAlign" or (op == "ScatterElements" and _str(_attr(node, "reduction", "none")) != "none"):
            census.shipped.setdefault(op, []).append(name)
        rule = RULES.get(op)
        reason = rule(node, ctx) if rule else None
        if reason:
            census.restricted.setdefault((op, reason), []).append(name)
    return census


def _unsupported_findings(unsupported: dict[str, list[str]], table: dict[str, Any]) -> list[Finding]:
    return [
        Finding(
            "error",
            "unsupported-op",
            f"{op} x{len(names)}: TensorRT's ONNX parser does not support {op} "
            f"(onnx-tensorrt {table['source']['tensorrt']} operator table); replace it before "
            "export or implement it as a plugin",
            names,
        )
        for op, names in sorted(unsupported.items())
    ]


def _unknown_op_findings(unknown: dict[str, list[str]], plugins: Sequence[str]) -> list[Finding]:
    """Ops TensorRT does not build in: a warning when plugin libraries are given, else an error."""
    findings = []
    for op, names in sorted(unknown.items()):
        if plugins:
            findings.append(
                Finding(
                    "warning",
                    "needs-plugin",
                    f"{op} x{len(names)} is not a built-in TensorRT op; the parser will look for a "
                    f"plugin named '{op.split('::')[-1]}' in the given plugin libraries",
                    names,
                )
            )
        else:
            findings.append(
                Finding(
                    "error",
                    "needs-plugin",
                    f"{op} x{len(names)} is not a built-in TensorRT op; it needs a TensorRT plugin "
                    f"registered as '{op.split('::')[-1]}' (give its library in the recipe's "
                    "`plugins:`), or replace the op before export",
                    names,
                )
            )
    return findings


def _shipped_plugin_findings(shipped: dict[str, list[str]], table: dict[str, Any]) -> list[Finding]:
    findings = []
    for op, names in sorted(shipped.items()):
        plugin = table["plugins"][op]
        findings.append(
            Finding(
                "warning",
                "needs-plugin",
                f"{op} x{len(names)} is built with TensorRT's '{plugin['plugin']}' plugin "
                f"(lib{plugin['library']}); that library must be present where the engine runs",
                names,
            )
        )
    return findings


def check_initializers(model: onnx.ModelProto) -> list[Finding]:
    """INT64 and DOUBLE weights that TensorRT casts."""
    int64: list[str] = []
    clamped: list[str] = []
    double: list[str] = []
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for t in g.initializer:
            if t.data_type == onnx.TensorProto.INT64:
                int64.append(t.name)
                arr = numpy_helper.to_array(t)
                # INT64 max/min are Slice's "to the end" sentinels; clamping them is harmless.
                inner = arr[(arr != np.iinfo(np.int64).max) & (arr != np.iinfo(np.int64).min)]
                if inner.size and (inner.min() < INT32_MIN or inner.max() > INT32_MAX):
                    clamped.append(t.name)
            elif t.data_type == onnx.TensorProto.DOUBLE:
                double.append(t.name)
        for n in g.node:
            for a in n.attribute:
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
    findings = []
    if int64:
        findings.append(
            Finding(
                "info",
                "int64-initializers",
                f"{len(int64)} INT64 initializer(s): TensorRT 10 keeps INT64 where the op "
                "supports it; TensorRT 8.x casts them to INT32",
                int64,
            )
        )
    if clamped:
        findings.append(
            Finding(
                "warning",
                "int64-initializers",
                f"{len(clamped)} INT64 initializer(s) hold values outside the INT32 range; where "
                "TensorRT casts to INT32 they are clamped and the result may change",
                clamped,
            )
        )
    if double:
        findings.append(
            Finding(
                "warning",
                "double-initializers",
                f"{len(double)} DOUBLE initializer(s) will be cast to FP32 (clamped to +-FLT_MAX)",
                double,
            )
        )
    return findings


def check_opset(model: onnx.ModelProto) -> list[Finding]:
    table = load_table()
    lo, hi = table["opset"]["min"], table["opset"]["max"]
    v = opset(model)
    if lo <= v <= hi:
        return []
    return [
        Finding(
            "warning",
            "opset",
            f"the model uses opset {v}; TensorRT {table['source']['tensorrt']}'s parser documents "
            f"opsets {lo} to {hi} (re-export with --opset {min(max(v, lo), hi)} if parsing fails)",
        )
    ]


def preflight_report(model: onnx.ModelProto, options: Any = None) -> list[Finding]:
    """All findings for ``model`` under ``options`` (a BuildOptions or None), errors first."""
    opts = getattr(options, "target", None)
    profiles = normalize_profiles(getattr(opts, "profiles", None))
    findings = [
        *check_ops(model, plugins=getattr(opts, "plugins", None) or ()),
        *check_profiles(graph_inputs(model), profiles),
        *check_initializers(model),
        *check_opset(model),
    ]
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def raise_on_blocking(findings: Sequence[Finding]) -> list[str]:
    """Raise for error findings (UsageError for profile problems, else ConversionError);
    return the warnings as strings."""
    errors = [f for f in findings if f.blocking]
    if errors:
        text = "; ".join(str(f) for f in errors)
        prefix = f"TensorRT preflight found {len(errors)} problem(s): "
        suffix = ". Nothing was built; `mconv inspect MODEL --target trt` lists every finding."
        if all(f.code in USAGE_CODES for f in errors):
            raise UsageError(prefix + text + suffix)
        raise ConversionError(prefix + text + suffix)
    return [str(f) for f in findings if f.severity == "warning"]
