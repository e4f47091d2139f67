"""Whole-graph simplification with onnxsim, falling back to onnxslim, then to the
project's own folding (over 2 GiB, over ``max_nodes`` nodes, or where both libraries fail).

onnxsim's optimizer passes grow faster than linearly with graph size (measured by
bench/passes.py: 8.7 s for 12.5k nodes, 31 s for 50k); on graphs that large the
project's own passes, which run before this one in the default pipeline, already do
the folding, so the pass switches to them to keep the pipeline linear.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from mconv.passes.base import Pass, PassResult
from mconv.passes.graph import constant_node_value, static_shapes
from mconv.passes.sizes import output_nbytes
from mconv.quiet import quiet as _quiet


def fold_bombs(model: onnx.ModelProto, limit: int) -> list[str]:
    """Nodes that constant folding (onnxsim's, which runs them in onnxruntime) would
    evaluate to more than ``limit`` bytes, or to a size nothing bounds, as "name (size)".

    Constant-ness is followed through the graph as onnxsim does (initializers,
    Constant nodes, Shape/Size of static tensors, nodes reading only constants);
    sizes come from :func:`mconv.passes.sizes.output_nbytes`, falling back to the
    inferred shapes where an input's value is not known without evaluating.
    """
    from mconv.limits import human

    g = model.graph
    shapes = static_shapes(model)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    inputs = {i.name for i in g.input}
    small: dict[str, np.ndarray] = {}
    const: set[str] = set()
    for t in g.initializer:
        if t.name in inputs:
            continue
        const.add(t.name)
        shapes[t.name] = tuple(int(d) for d in t.dims)
        elem[t.name] = t.data_type
        if np.prod(t.dims, dtype=np.int64) <= 1 << 16:
            small[t.name] = numpy_helper.to_array(t)

    def itemsize(name: str) -> int:
        try:
            et = elem.get(name, 0)
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(et)).itemsize if et else 0
        except Exception:
            return 0

    found: list[str] = []
    for n in g.node:
        if n.op_type == "Constant":
            v = constant_node_value(n)
            if v is not None and n.output:
                const.add(n.output[0])
                shapes[n.output[0]] = tuple(v.shape)
                if v.size <= 1 << 16:
                    small[n.output[0]] = v
            continue
        if n.op_type in ("Shape", "Size") and n.input and n.input[0] in shapes:
            const.update(n.output)
            continue
        if not n.input or not all(not x or x in const for x in n.input):
            continue
        size = output_nbytes(n, shapes.get, small.get, itemsize, shapes.get)
        if size is None:
            outs = [shapes.get(o) for o in n.output if o]
            if outs and all(s is not None for s in outs):
                size = sum(int(np.prod(s, dtype=np.int64)) * (itemsize(o) or 8) for s, o in zip(outs, n.output))
        if size is None or size > limit:
            found.append(f"{n.name or n.op_type} ({'size unknown' if size is None else human(size)})")
            continue
        const.update(o for o in n.output if o)
    return found


def _strict_shapes(model: onnx.ModelProto) -> None:
    from mconv.passes.shape_inference import _skeleton

    onnx.shape_inference.infer_shapes(_skeleton(model), check_type=True, strict_mode=True, data_prop=True)


def _unsound(source: onnx.ModelProto, result: onnx.ModelProto) -> str | None:
    """Why ``result`` must not replace ``source``, or None.

    onnxsim's own check compares output values, not shapes: it merges
    ``ReduceMean(keepdims=0) -> ReduceMean(keepdims=1)`` into one ReduceMean whose
    output has another rank than the declared one (tests/property/test_regressions.py).
    So the result must also pass strict shape inference, unless the source does not.
    """
    try:
        _strict_shapes(result)
    except Exception as e:
        try:
            _strict_shapes(source)
        except Exception:
            return None  # onnx cannot check the source either: nothing to hold the result to
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"result fails shape inference: {first[:160]}"
    return None


# Optional dependencies of onnxsim that a simplification never uses: torch (3 s of its
# 5.5 s import on 2 cores, for a PPQ integration) and sympy (about 35 MiB of the
# process's peak, for printing symbolic shapes in its model tables).
_UNUSED_BY_ONNXSIM = ("torch", "sympy")


def _import_onnxsim():
    """``import onnxsim`` without its optional dependencies that simplifying never uses.

    onnxsim imports each of :data:`_UNUSED_BY_ONNXSIM` inside ``try/except ImportError``.
    Those this process has not imported already are refused for the duration of the
    import (``sys.modules[name] = None``) and allowed again afterwards.
    """
    import sys

    if "onnxsim" in sys.modules:
        import onnxsim

        return onnxsim
    refused = [m for m in _UNUSED_BY_ONNXSIM if m not in sys.modules]
    for m in refused:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        import onnxsim
    finally:
        for m in refused:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return onnxsim


def _onnxsim_simplify(model: onnx.ModelProto, threshold_mb: int) -> tuple[onnx.ModelProto, bool]:
    """``onnxsim.simplify(model, perform_optimization=True, tensor_size_threshold=...)``,
    through files and, where it can, through onnxsim's C++ core alone.

    Given a ModelProto, onnxsim serialises it and its core returns the result as bytes:
    the weights are held five times at once (the model, its bytes, the core's copy, the
    result's bytes and their copy into Python). Given a path, the core reads and writes
    files, so at most about three copies are alive (ResNet-18: 335 -> 250 MiB peak);
    the result is the same model. Models that still reference external data files are
    passed in memory (a copy in a temporary folder would not find them).
    """
    import os
    import tempfile

    from mconv.modelio import iter_tensors

    kwargs = {"perform_optimization": True, "tensor_size_threshold": f"{threshold_mb}MB"}
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model)):
        return _import_onnxsim().simplify(model, **kwargs)
    with tempfile.TemporaryDirectory(prefix="mconv-simplify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        onnx.save(model, path)
        simplified = _simplify_with_core(model, path, os.path.join(tmp, "simplified.onnx"), threshold_mb << 20)
        if simplified is not None:
            return simplified, True
        return _import_onnxsim().simplify(path, **kwargs)


# onnxsim.simplify's fast path for a path and check_n=0 is its core's simplify_path with
# these arguments (onnxsim 0.8), then onnx's checker on the result.
_CORE_ARGS = {
    "skip_optimizers": [],
    "constant_folding": True,
    "shape_inference": True,
    "target_opset_version": None,
    "rewriter": None,
    "initializers_as_constants": True,
    "include_inline_functions": False,
    "mutable_initializer": False,
    "overwrite_input_shapes": None,
    "unused_output": None,
    "extra_optimizers": None,
}
_CORE_MAX_THRESHOLD = 2**31 - 9999  # above it onnxsim.simplify leaves the fast path


def _simplify_with_core(model: onnx.ModelProto, path: str, out: str, threshold: int) -> onnx.ModelProto | None:
    """What ``onnxsim.simplify(path, ...)`` returns, computed by its C++ core without
    importing the onnxsim package, or None where that is not known to be the same
    (then the caller asks onnxsim itself).

    ``import onnxsim`` imports ~500 modules (quantisers, exporters, onnxruntime):
    40 MiB of a build's peak before any weight is read. Its core needs none of them;
    onnxruntime only when it folds a node, and then the executor below imports the
    package and runs the node as onnxsim would. The same model results: onnxsim's
    fast path makes exactly this call. Not taken when onnxsim would first copy into
    its registry a schema one of the model's ops uses (``import_onnx_schemas``), when
    its threshold would take it off that path, or when anything fails (onnxsim then
    retries as it would after its own fast path fails).
    """
    import os

    core = _onnxsim_core()
    if core is None or threshold > _CORE_MAX_THRESHOLD:
        return None
    try:
        if _needs_schema_import(core, model):
            return None
        previous = os.environ.get("ONNXSIM_GEMM_FUSION_BACKEND")
        os.environ["ONNXSIM_GEMM_FUSION_BACKEND"] = "ort_cpu"  # what simplify sets for its default
        try:
            core.simplify_path(
                executor=_core_executor(core), in_path=path, out_path=out, tensor_size_threshold=threshold, **_CORE_ARGS
            )
        finally:
            if previous is None:
                os.environ.pop("ONNXSIM_GEMM_FUSION_BACKEND", None)
            else:
                os.environ["ONNXSIM_GEMM_FUSION_BACKEND"] = previous
        onnx.checker.check_model(out)
        return onnx.load(out)
    except Exception:
        return None


def _onnxsim_core():
    """onnxsim's compiled core, ``onnxsim.onnxsim_cpp2py_export``, loaded from its file
    without running ``onnxsim/__init__`` (a later ``import onnxsim`` reuses it); None
    where onnxsim is not installed or has no such module."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    name = "onnxsim.onnxsim_cpp2py_export"
    if name in sys.modules:
        return sys.modules[name]
    try:
        spec = importlib.util.find_spec("onnxsim")  # locates the package, runs nothing
        folder = list(spec.submodule_search_locations or []) if spec else []
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            file = os.path.join(folder[0], "onnxsim_cpp2py_export" + suffix) if folder else ""
            if file and os.path.isfile(file):
                core_spec = importlib.util.spec_from_file_location(name, file)
                core = importlib.util.module_from_spec(core_spec)
                core_spec.loader.exec_module(core)
                sys.modules[name] = core
                return core
    except Exception:
        return None
    return None


def _needs_schema_import(core, model: onnx.ModelProto) -> bool:
    """Whether onnxsim.simplify's ``import_onnx_schemas`` would give its core the schema
    of an op ``model`` uses (an op onnx knows, e.g. registered with
    ``onnx.defs.register_schema``, and the core does not)."""
    from mconv.graphinfo import all_nodes

    ops = {(n.domain or "", n.op_type) for n in all_nodes(model.graph)}
    ops.update((n.domain or "", n.op_type) for f in model.functions for n in f.node)
    return any(not core._has_schema(op, domain) and onnx.defs.has(op, domain) for domain, op in ops)


_EXECUTOR = None


def _core_executor(core):
    """The executor the core runs folded nodes through: onnxsim's own, made (with the
    package and onnxruntime imported) only when the core first asks."""
    global _EXECUTOR
    if _EXECUTOR is None:

        class _OnDemandExecutor(core.ModelExecutor):
            def Run(self, model_str, inputs_str):
                executor = _import_onnxsim().onnx_simplifier._get_model_executor(None)
                return executor.Run(model_str, inputs_str)

        _EXECUTOR = _OnDemandExecutor()
    return _EXECUTOR


class SimplifyPass(Pass):
    """Run onnxsim (or onnxslim, or own folding) and keep the result only if it checks."""

    name = "simplify"

    def __init__(self, max_nodes: int | None = 10_000) -> None:
        self.max_nodes = max_nodes

    def call(self, model: onnx.ModelProto) -> PassResult:
        from mconv.modelio import EXTERNAL_THRESHOLD, model_nbytes

        if model_nbytes(model) >= EXTERNAL_THRESHOLD:
            return self._fallback(model, "model over 2 GiB: onnxsim skipped")
        if self.max_nodes is not None and len(model.graph.node) > self.max_nodes:
            return self._fallback(model, f"over {self.max_nodes} nodes: onnxsim skipped")
        from mconv.limits import fold_limit, human

        limit = fold_limit(model)
        bombs = fold_bombs(model, limit)
        if bombs:
            # onnxsim and onnxslim evaluate constant nodes before looking at their size.
            return self._fallback(
                model,
                f"onnxsim/onnxslim skipped: {len(bombs)} node(s) would fold above the fold limit "
                f"{human(limit)}: " + ", ".join(bombs[:3]),
            )
        notes: list[str] = []
        try:
            with _quiet():
                simplified, ok = _onnxsim_simplify(model, max(1, limit >> 20))
            why = "could not validate its result" if not ok else _unsound(model, simplified)
            if why is None:
                return PassResult(simplified, True, ["onnxsim"])
            notes.append(f"onnxsim {why}")
        except Exception as e:
            notes.append(f"onnxsim failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        try:
            import onnxslim

            with _quiet():
                slimmed = onnxslim.slim(model)
            if slimmed is not None:
                onnx.checker.check_model(slimmed)
                why = _unsound(model, slimmed)
                if why is None:
                    return PassResult(slimmed, True, [*notes, "onnxslim"])
                notes.append(f"onnxslim {why}")
        except Exception as e:
            notes.append(f"onnxslim failed: {type(e).__name__}")
        result = self._fallback(model, "; ".join(notes))
        return result

    @staticmethod
    def _fallback(model: onnx.ModelProto, why: str) -> PassResult:
        from mconv.passes.dce import EliminateDeadNodesPass
        from mconv.passes.fold import FoldConstantsPass
        from mconv.passes.shape_inference import InferShapesPass

        modified = False
        for p in (InferShapesPass(), FoldConstantsPass(), EliminateDeadNodesPass()):
            r = p.call(model)
            model, modified = r.model, modified or r.modified
        return PassResult(model, modified, [why, "own folding"])
