"""Values at the edges of ncnn's kernels: a zero base under a tensor exponent, and an
attention mask with a fully masked row.

Both were written wrong before (found by the onnx conformance cases with their inputs
frozen as constants, as deployed models have them): ncnn's pow is exp(y * log(x)) and
returned ~2.4e38 for 0 ** y; an additive -inf mask made the softmax of a fully masked
row NaN, and the `Where(row_all_masked, 0, softmax)` after it (arithmetic in ncnn:
0 * NaN) passed the NaN on. onnxruntime is the reference.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "edge", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pow_with_a_tensor_exponent_at_a_zero_base(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.uniform(0.2, 3.0, (4, 6)).astype(np.float32)
    y[0, :3] = 0.0  # 0 ** 0 = 1
    model = _model(
        [helper.make_node("Pow", ["x", "y"], ["z"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 6])],
        [numpy_helper.from_array(y, "y")],
    )
    x = rng.uniform(0.1, 4.0, (4, 6)).astype(np.float32)
    x[0, :] = 0.0
    x[2, ::2] = 0.0
    samples = [{"x": x}]
    ref = run_onnxruntime(model, samples)[0]["z"]
    out = convert_and_run(model, samples, tmp_path / "out")[0][0]["z"].reshape(ref.shape)
    assert ref[0, 0] == 1.0 and ref[0, 3] == 0.0  # the cases this test is about
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def _masked_attention(seq: int, dim: int, mask: np.ndarray):
    """softmax(q k^T / sqrt(d) + bias) v with bias = where(mask, 0, -inf) folded to a
    constant, and the fully masked rows set to 0 after the softmax (as ONNX's
    Attention-23 function and torch's SDPA exports do)."""
    bias = np.where(mask, 0.0, -np.inf).astype(np.float32)
    all_masked = ~mask.any(axis=-1, keepdims=True)
    rng = np.random.default_rng(1)
    k = rng.standard_normal((dim, seq)).astype(np.float32)
    v = rng.standard_normal((seq, dim)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["q", "kt"], ["s0"]),
        helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Add", ["s1", "bias"], ["s2"]),
        helper.make_node("Softmax", ["s2"], ["p0"], axis=-1),
        helper.make_node("Where", ["all_masked", "zero", "p0"], ["p1"]),
        helper.make_node("MatMul", ["p1", "v"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(k, "kt"),
        numpy_helper.from_array(v, "v"),
        numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "scale"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(all_masked, "all_masked"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])],
        inits,
    )


def test_attention_with_a_fully_masked_row_reads_zero_not_nan(tmp_path):
    seq, dim = 6, 8
    mask = np.tril(np.ones((seq, seq), bool))
    mask[2, :] = False  # a query that may attend to nothing
    model = _masked_attention(seq, dim, mask)
    q = np.random.default_rng(2).standard_normal((1, seq, dim)).astype(np.float32)
    samples = [{"q": q}]
    ref = run_onnxruntime(model, samples)[0]["y"]
    out = convert_and_run(model, samples, tmp_path / "out")[0][0]["y"].reshape(ref.shape)
    assert np.isfinite(ref).all() and not ref[0, 2].any()  # onnxruntime's select gives 0 there
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_masked_scores_that_are_also_an_output_keep_their_minus_inf(tmp_path):
    # The -inf entries only become -FLT_MAX where the sum feeds nothing but a softmax:
    # a graph output of the masked scores still reads -inf.
    seq, dim = 4, 8
    mask = np.tril(np.ones((seq, seq), bool))
    model = _masked_attention(seq, dim, mask)
    model.graph.output.append(helper.make_tensor_value_info("s2", TensorProto.FLOAT, [1, seq, seq]))
    q = np.random.default_rng(3).standard_normal((1, seq, dim)).astype(np.float32)
    samples = [{"q": q}]
    ref = run_onnxruntime(model, samples)[0]
    out = convert_and_run(model, samples, tmp_path / "out")[0][0]
    s = out["s2"].reshape(ref["s2"].shape)
    assert np.isneginf(ref["s2"]).sum() == seq * (seq - 1) // 2
    np.testing.assert_array_equal(np.isneginf(s), np.isneginf(ref["s2"]))
    np.testing.assert_allclose(out["y"].reshape(ref["y"].shape), ref["y"], rtol=1e-4, atol=1e-5)
