"""GatherElements of constants folds with ONNX semantics (BERT's token_type_ids buffer)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mconv.passes import optimize
from mconv.targets.ncnn.fold import evaluate_constant


def _bert_like():
    # A [1, 8] buffer gathered at positions [1, 5] (fewer than the buffer holds), added
    # to the input: only folding it the ONNX way gives onnxruntime's numbers.
    buf = numpy_helper.from_array(np.arange(8, dtype=np.float32)[None] * 10, "buf")
    pos = numpy_helper.from_array(np.array([[4, 0, -1, 2, 2]], np.int64), "pos")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])
    nodes = [
        helper.make_node("GatherElements", ["buf", "pos"], ["g"], axis=1),
        helper.make_node("Add", ["x", "g"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [x], [y], [buf, pos])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_gather_elements_of_constants_folds_as_onnxruntime_computes() -> None:
    model = _bert_like()
    x = np.ones((1, 5), np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    out, _ = optimize(model)
    assert all(n.op_type != "GatherElements" for n in out.graph.node)
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert got.tolist() == [[41.0, 1.0, 71.0, 21.0, 21.0]]


def test_ncnn_writer_evaluates_gather_elements_the_same_way() -> None:
    node = helper.make_node("GatherElements", ["d", "i"], ["o"], axis=1)
    data = np.zeros((1, 512), np.int64) + np.arange(512)
    idx = np.arange(128, dtype=np.int64)[None]
    (out,) = evaluate_constant(node, [data, idx], 17)
    assert out.shape == (1, 128) and out.tolist() == [list(range(128))]
