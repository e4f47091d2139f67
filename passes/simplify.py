"""Whole-graph simplification with onnxsim, falling back to onnxslim, then to the
project's own folding (over 2 GiB, over ``max_nodes`` nodes, or where both libraries fail).

onnxsim's optimizer passes grow faster than linearly with graph size (measured by
bench/passes.py: 8.7 s for 12.5k nodes, 31 s for 50k); on graphs that large the
project's own passes, which run before this one in the default pipeline, already do
the folding, so the pass switches to them to keep the pipeline linear.
"""

from __future__ import annotations

import contextlib
import io

import onnx

from mconv.passes.base import Pass, PassResult


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


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
        notes: list[str] = []
        try:
            import onnxsim

            with _quiet():
                simplified, ok = onnxsim.simplify(model, perform_optimization=True)
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
