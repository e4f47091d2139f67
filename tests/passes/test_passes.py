"""Each pass on a tiny graph (structure and ``modified``), and the default pipeline on the
onnx package's real light models (outputs preserved, node counts reduced)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.errors import UsageError
from mconv.modelio import load_onnx
from mconv.passes import DEFAULT_PIPELINE, get_pass, optimize, parse_pass_list
from tests.models import (
    LIGHT_MODELS,
    conv_bn_relu_model,
    light_model,
    make_graph_model,
    random_feeds_for,
    randomize_weights,
    run_ort,
)


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, rtol: float = 1e-5) -> None:
    feeds = random_feeds_for(before, seed=1)
    a, b = run_ort(before, feeds), run_ort(after, feeds)
    for x, y in zip(a, b, strict=True):
        scale = max(float(np.abs(x).max()), 1e-12)
        assert float(np.abs(x - y).max()) <= rtol * scale


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def test_fold_constants_folds_shape_subgraph():
    # y = Reshape(x, Concat(Shape(x)[0:1], [-1])): the shape arithmetic folds to a constant.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["shp"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "shp"], ["y"], name="reshape"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    m = make_graph_model(nodes, [_vi("x", [2, 3, 4])], [_vi("y", [2, 12])], inits)
    m2, reports = optimize(_copy(m), ["infer_shapes", "fold_constants", "eliminate_dead_nodes"])
    assert [n.op_type for n in m2.graph.node] == ["Reshape"]
    assert reports[1].modified and reports[1].nodes_after == 1
    _assert_same_outputs(m, m2)


def test_fold_constants_materialises_constant_of_shape_weights():
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["wshape"], ["W"], name="cos", value=numpy_helper.from_array(np.array([0.5], np.float32))
        ),
        helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
    ]
    m = make_graph_model(
        nodes, [_vi("x", [1, 4])], [_vi("y", [1, 3])], [numpy_helper.from_array(np.array([4, 3], np.int64), "wshape")]
    )
    res, report = get_pass("fold_constants")(_copy(m))
    assert res.modified and report.nodes_after == 1
    w = next(t for t in res.model.graph.initializer if t.name == "W")
    np.testing.assert_array_equal(numpy_helper.to_array(w), np.full((4, 3), 0.5, np.float32))


def test_fold_constants_reports_unmodified_graph():
    m = conv_bn_relu_model()
    res, _ = get_pass("fold_constants")(_copy(m))
    assert not res.modified


def test_eliminate_identity_dropout_and_noop_cast():
    nodes = [
        helper.make_node("Identity", ["x"], ["a"], name="id"),
        helper.make_node("Dropout", ["a"], ["b"], name="drop"),
        helper.make_node("Cast", ["b"], ["c"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    m = make_graph_model(nodes, [_vi("x", [2, 2])], [_vi("y", [2, 2])])
    m2, reports = optimize(_copy(m), ["infer_shapes", "eliminate_identity"])
    assert [n.op_type for n in m2.graph.node] == ["Relu"]
    assert m2.graph.node[0].input[0] == "x"
    assert reports[1].modified
    _assert_same_outputs(m, m2)


@pytest.mark.parametrize(
    ("training", "ratio", "dropped"),
    [(False, 0.5, True), (True, 0.0, True), (True, 0.5, False), (None, 0.5, False)],
)
def test_eliminate_dropout_only_in_inference_mode(training, ratio, dropped):
    """A Dropout with training_mode true (random masks) is kept; None: a run-time flag."""
    inits = [numpy_helper.from_array(np.array(ratio, np.float32), "r")]
    inputs = [_vi("x", [2, 2])]
    if training is None:
        inputs.append(helper.make_tensor_value_info("t", TensorProto.BOOL, []))
    else:
        inits.append(numpy_helper.from_array(np.array(training), "t"))
    nodes = [
        helper.make_node("Dropout", ["x", "r", "t"], ["a"], name="drop"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    m = make_graph_model(nodes, inputs, [_vi("y", [2, 2])], inits)
    res, _ = get_pass("eliminate_identity")(_copy(m))
    assert ("Dropout" not in [n.op_type for n in res.model.graph.node]) == dropped


def test_castlike_becomes_cast_and_folds():
    """CastLike(constant, x) needs only x's type: a Cast, which fold_constants then folds."""
    nodes = [
        helper.make_node("CastLike", ["two", "x"], ["t"], name="like"),
        helper.make_node("Mul", ["x", "t"], ["y"], name="mul"),
    ]
    inits = [numpy_helper.from_array(np.array(2, np.int64), "two")]
    m = make_graph_model(nodes, [_vi("x", [2, 2])], [_vi("y", [2, 2])], inits)
    m2, _ = optimize(_copy(m), ["infer_shapes", "eliminate_identity", "fold_constants"])
    assert [n.op_type for n in m2.graph.node] == ["Mul"]
    _assert_same_outputs(m, m2)


def test_eliminate_identity_keeps_graph_output_names():
    m = make_graph_model([helper.make_node("Identity", ["x"], ["y"], name="id")], [_vi("x", [2])], [_vi("y", [2])])
    res, _ = get_pass("eliminate_identity")(_copy(m))
    assert not res.modified and [o.name for o in res.model.graph.output] == ["y"]


def test_eliminate_reshape_chain():
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["a"], name="r1"),
        helper.make_node("Reshape", ["a", "s2"], ["y"], name="r2"),
    ]
    inits = [
        numpy_helper.from_array(np.array([6, 4], np.int64), "s1"),
        numpy_helper.from_array(np.array([4, 6], np.int64), "s2"),
    ]
    m = make_graph_model(nodes, [_vi("x", [2, 3, 4])], [_vi("y", [4, 6])], inits)
    m2, _ = optimize(_copy(m), ["eliminate_identity", "eliminate_dead_nodes"])
    assert [n.name for n in m2.graph.node] == ["r2"] and m2.graph.node[0].input[0] == "x"
    _assert_same_outputs(m, m2)


def test_fuse_conv_bn():
    m = conv_bn_relu_model()
    m2, reports = optimize(_copy(m), ["fuse_conv_bn", "eliminate_dead_nodes"])
    assert [n.op_type for n in m2.graph.node] == ["Conv", "Relu"]
    assert reports[0].modified
    _assert_same_outputs(m, m2)


def test_fuse_conv_bn_skips_shared_conv_output():
    m = conv_bn_relu_model()
    m.graph.output.append(_vi("c", [1, 4, 8, 8]))  # conv output also read as a graph output
    res, _ = get_pass("fuse_conv_bn")(_copy(m))
    assert not res.modified


def test_eliminate_dead_nodes():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="live"), helper.make_node("Neg", ["x"], ["z"], name="dead")]
    m = make_graph_model(
        nodes, [_vi("x", [2])], [_vi("y", [2])], [numpy_helper.from_array(np.ones(2, np.float32), "unused")]
    )
    res, report = get_pass("eliminate_dead_nodes")(_copy(m))
    assert res.modified and [n.name for n in res.model.graph.node] == ["live"]
    assert not res.model.graph.initializer
    assert report.nodes_before == 2 and report.nodes_after == 1


def test_simplify_runs_onnxsim():
    m = conv_bn_relu_model()
    res, _ = get_pass("simplify")(_copy(m))
    assert res.notes[0] == "onnxsim"
    _assert_same_outputs(m, res.model)


def test_simplify_falls_back_to_own_folding():
    from mconv.passes.simplify import SimplifyPass

    m = conv_bn_relu_model()
    res = SimplifyPass(max_nodes=1).call(_copy(m))
    assert "own folding" in res.notes
    _assert_same_outputs(m, res.model)


def test_infer_shapes_fills_value_info():
    m = conv_bn_relu_model()
    res, _ = get_pass("infer_shapes")(_copy(m))
    names = {vi.name for vi in res.model.graph.value_info}
    assert {"c", "bn"} <= names


def test_unknown_pass_names_the_pass():
    with pytest.raises(UsageError, match="nope"):
        parse_pass_list("infer_shapes,nope")


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_default_pipeline_keeps_light_model_outputs(name):
    src = load_onnx(light_model(name))
    # Fold the ConstantOfShape weights and randomize them: shipped weights are all equal.
    model, _ = optimize(_copy(src), ["infer_shapes", "fold_constants", "eliminate_dead_nodes"])
    model = randomize_weights(model, seed=3)
    before = len(src.graph.node)
    optimized, reports = optimize(_copy(model), list(DEFAULT_PIPELINE))
    assert len(optimized.graph.node) < before
    assert not any(n.op_type == "ConstantOfShape" for n in optimized.graph.node)
    onnx.checker.check_model(optimized)
    _assert_same_outputs(model, optimized, rtol=1e-4)
    assert [r.name for r in reports] == list(DEFAULT_PIPELINE)


def test_fold_quantized_weights_folds_constant_qdq_and_keeps_activation_qdq():
    # int8 weight + DequantizeLinear (opset 13) and a float weight through a constant
    # Q -> DQ pair are folded to float; the activation's Q/DQ stays a node.
    rng = np.random.default_rng(0)
    w8 = rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    ws = (rng.random(4) * 0.02 + 0.005).astype(np.float32)
    wf = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w8": w8, "ws": ws, "wz": np.zeros(4, np.int8), "wf": wf, "fs": np.float32(0.02),
        "fz": np.int8(0), "xs": np.float32(0.05), "xz": np.int8(0)}.items()]  # fmt: skip
    m = make_graph_model(
        [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
         helper.make_node("DequantizeLinear", ["w8", "ws", "wz"], ["w1"], axis=0),
         helper.make_node("Conv", ["xd", "w1"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("QuantizeLinear", ["wf", "fs", "fz"], ["fq"]),
         helper.make_node("DequantizeLinear", ["fq", "fs", "fz"], ["w2"]),
         helper.make_node("Conv", ["c", "w2"], ["y"])],
        [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 4, 6, 6])], inits, opset=13,
    )  # fmt: skip
    out, reports = optimize(_copy(m), ["fold_quantized_weights", "eliminate_dead_nodes"])
    assert reports[0].modified and reports[0].nodes_after == 4
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "Conv", "Conv"]
    values = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_allclose(values["w1"], w8.astype(np.float32) * ws[:, None, None, None], rtol=1e-6)
    fake = np.clip(np.round(wf / np.float32(0.02)), -128, 127) * np.float32(0.02)
    np.testing.assert_allclose(values["w2"], fake, rtol=1e-6)
    assert not {"w8", "wz", "wf", "fz"} & set(values)  # nothing reads them now
    assert {"xs", "xz"} <= set(values)  # the activation's Q/DQ still does
    _assert_same_outputs(m, out)


def test_a_targets_required_passes_run_in_order_from_the_first_not_done():
    # MNN requires fold_quantized_weights then eliminate_dead_nodes: the cleanup must follow
    # the fold although the default pipeline ran eliminate_dead_nodes already.
    from types import SimpleNamespace

    from mconv.pipeline import _required_passes

    mnn_like = SimpleNamespace(required_passes=("fold_quantized_weights", "eliminate_dead_nodes"))
    assert _required_passes(mnn_like, list(DEFAULT_PIPELINE)) == ["fold_quantized_weights", "eliminate_dead_nodes"]
    assert _required_passes(mnn_like, [*DEFAULT_PIPELINE, "fold_quantized_weights"]) == []
    assert _required_passes(SimpleNamespace(required_passes=()), list(DEFAULT_PIPELINE)) == []
