"""Facts read off ONNX graphs: attention blocks (they choose NNCF's transformer mode)."""

from __future__ import annotations

from onnx import TensorProto, helper

from mconv.graphinfo import attention_blocks
from tests.mconv.test_verify import chain_model
from tests.models import make_graph_model


def _attention(fused: bool = False):
    vi = helper.make_tensor_value_info
    if fused:
        nodes = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=2)]
    else:
        nodes = [
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["s"]),
            helper.make_node("Div", ["s", "scale"], ["ss"]),
            helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "v"], ["o"]),
        ]
    inputs = [vi(n, TensorProto.FLOAT, [1, 4, 8]) for n in ("q", "k", "v")]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [2.0])]
    return make_graph_model(nodes, inputs, [vi("o", TensorProto.FLOAT, [1, 4, 8])], inits)


def test_matmul_softmax_matmul_is_attention():
    assert attention_blocks(_attention()) == 1


def test_fused_attention_op_counts():
    assert attention_blocks(_attention(fused=True)) == 1


def test_classifier_softmax_is_not_attention():
    m = chain_model()
    m.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    m.graph.output[0].name = "probs"
    assert attention_blocks(m) == 0
