"""Folding never materialises a tensor above the fold limit (sizes known before evaluating)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.passes import get_pass
from mconv.passes.fold import FoldConstantsPass


def _model(nodes, inits, out="y"):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _reduce_of(op_nodes, inits):
    return _model([*op_nodes, helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                   helper.make_node("Add", ["x", "s"], ["y"])], inits)  # fmt: skip


def test_broadcast_outer_sum_is_left_unfolded():
    col = numpy_helper.from_array(np.ones((60000, 1), np.float32), "col")
    row = numpy_helper.from_array(np.ones((1, 60000), np.float32), "row")
    m = _reduce_of([helper.make_node("Add", ["col", "row"], ["big"], name="outer")], [col, row])
    res = FoldConstantsPass().call(m)
    assert [n.op_type for n in res.model.graph.node] == ["Add", "ReduceSum", "Add"]
    assert any("outer (13.4 GiB)" in n for n in res.notes)


def test_range_with_a_huge_limit_is_left_unfolded():
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in (("a", 0), ("b", 10**11), ("d", 1))]
    m = _reduce_of([helper.make_node("Range", ["a", "b", "d"], ["big"], name="r")], inits)
    res = FoldConstantsPass().call(m)
    assert "Range" in [n.op_type for n in res.model.graph.node]
    assert any("r (745.1 GiB)" in n for n in res.notes)


def _expand_model(n: int):
    inits = [
        numpy_helper.from_array(np.ones((1, 1), np.float32), "one"),
        numpy_helper.from_array(np.array([n, n], np.int64), "shape"),
    ]
    return _reduce_of([helper.make_node("Expand", ["one", "shape"], ["big"], name="e")], inits)


def test_a_small_expand_is_folded_and_the_limit_can_be_lowered(monkeypatch):
    res = FoldConstantsPass().call(_expand_model(64))
    assert "Expand" not in [n.op_type for n in res.model.graph.node]
    res = FoldConstantsPass(max_folded_bytes=1000).call(_expand_model(64))
    assert "Expand" in [n.op_type for n in res.model.graph.node]
    monkeypatch.setenv("MCONV_FOLD_LIMIT", "16K")
    res = FoldConstantsPass().call(_expand_model(64))  # 16 KiB: exactly at the limit
    assert "Expand" not in [n.op_type for n in res.model.graph.node]
    res = FoldConstantsPass().call(_expand_model(65))
    assert "Expand" in [n.op_type for n in res.model.graph.node]


def test_simplify_does_not_hand_a_bomb_to_onnxsim():
    res = get_pass("simplify").call(_expand_model(60000))
    assert "Expand" in [n.op_type for n in res.model.graph.node]
    assert any("onnxsim/onnxslim skipped" in n and "e (13.4 GiB)" in n for n in res.notes)
    onnx.checker.check_model(res.model)


@pytest.mark.parametrize("text", ["0", "-1", "12Q", ""])
def test_fold_limit_values_are_checked(monkeypatch, text):
    from mconv.errors import UsageError
    from mconv.limits import parse_size

    with pytest.raises(UsageError, match="--fold-limit"):
        parse_size(text, "--fold-limit")
