"""Property: the default pass pipeline does not change what a model computes.

For random valid graphs (``strategies.onnx_graphs``), the optimized model must pass
``onnx.checker`` (full check), keep the graph's output names, and give onnxruntime
outputs within 1e-5 of the source's, relative to the output's largest magnitude.
Both models run with onnxruntime's own graph optimizations off, so any difference
comes from our passes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given

from mconv.passes import optimize
from tests.property.strategies import GraphCase, onnx_graphs

RTOL = 1e-5
# Float32 rounding is relative to the magnitudes a graph computes with, not to its
# (possibly cancelled, near-zero) outputs: the absolute slack is 1e-6 of the largest
# intermediate value.
ATOL_OF_SCALE = 1e-6


def run_plain(model: onnx.ModelProto, feeds: dict[str, np.ndarray], all_values: bool = False) -> dict[str, np.ndarray]:
    """onnxruntime outputs by name, with its graph optimizations off.

    With ``all_values`` every float tensor some node produces is an output too.
    """
    if all_values:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        inferred = onnx.shape_inference.infer_shapes(m)
        for vi in inferred.graph.value_info:
            if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and vi.name not in have:
                m.graph.output.append(vi)
        model = m
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def value_scale(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """The largest finite magnitude of any float value the model computes (at least 1)."""
    values = run_plain(model, feeds, all_values=True)
    mags = [float(np.max(np.abs(v))) for v in values.values() if v.dtype == np.float32 and v.size]
    return max([1.0, *(m for m in mags if np.isfinite(m))])


def assert_same_outputs(case: GraphCase, optimized: onnx.ModelProto) -> None:
    feeds = case.feeds(seed=0)
    ref = run_plain(case.model, feeds)
    got = run_plain(optimized, feeds)
    assert list(got) == list(ref), f"outputs changed: {list(ref)} -> {list(got)}"
    atol = ATOL_OF_SCALE * value_scale(case.model, feeds)
    for name, r in ref.items():
        g = got[name]
        assert g.shape == r.shape, f"{name}: shape {g.shape} != {r.shape}"
        assert g.dtype == r.dtype, f"{name}: dtype {g.dtype} != {r.dtype}"
        bound = RTOL * float(np.max(np.abs(r))) + atol
        err = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
        assert err <= bound, f"{name}: max |diff| {err:.3g} > {bound:.3g} (max |ref| {np.max(np.abs(r)):.3g})"


def optimize_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    out, _ = optimize(m)
    return out


@given(case=onnx_graphs())
def test_default_pipeline_keeps_outputs(case: GraphCase) -> None:
    optimized = optimize_copy(case.model)
    onnx.checker.check_model(optimized, full_check=True)
    assert_same_outputs(case, optimized)


@given(case=onnx_graphs(layouts=("NCHW",), rules=("conv", "batchnorm", "activation", "binary_const", "pool")))
def test_default_pipeline_keeps_cnn_outputs(case: GraphCase) -> None:
    """CNN-shaped graphs only: where Conv+BN fusion and folding do most of their work."""
    optimized = optimize_copy(case.model)
    onnx.checker.check_model(optimized, full_check=True)
    assert_same_outputs(case, optimized)
