"""One small graph per rule family: writer + ncnn vs onnxruntime (FP32 tolerance),
plus structural checks on the emitted layers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import helper

H = helper.make_node


def _w(rng, *shape, scale=0.5):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("group", [1, 2, 8])
def test_conv2d_grouped_depthwise_with_relu_fused(check, make_model, rng, group):
    m = make_model(
        [H("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 2, 1], strides=[2, 1], group=group),
         H("Relu", ["c"], ["y"])],
        {"x": (1, 8, 9, 10)}, ["y"],
        {"w": _w(rng, 16, 8 // group, 3, 3), "b": _w(rng, 16)},
    )  # fmt: skip
    check(m)
    text = check.param_text()
    layer = "Convolution " if group == 1 else "ConvolutionDepthWise"
    assert layer in text and " 9=1" in text and "ReLU" not in text


def test_conv1d_and_autopad_same(check, make_model, rng):
    m = make_model(
        [H("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2])],
        {"x": (1, 4, 17)}, ["y"], {"w": _w(rng, 6, 4, 3)},
    )  # fmt: skip
    check(m)
    assert "Convolution1D" in check.param_text()


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_output_padding(check, make_model, rng, group):
    m = make_model(
        [H("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 0, 1],
           output_padding=[1, 0], group=group)],
        {"x": (1, 4, 5, 6)}, ["y"], {"w": _w(rng, 4, 6 // group, 3, 3), "b": _w(rng, 6)},
    )  # fmt: skip
    check(m)


def test_gemm_and_matmul_const_and_dynamic(check, make_model, rng):
    m = make_model(
        [H("Gemm", ["x", "w", "c"], ["g"], transB=1, alpha=0.5, beta=2.0),
         H("MatMul", ["g", "m"], ["h"]),
         H("Reshape", ["h", "s"], ["r"]),
         H("Transpose", ["r"], ["rt"], perm=[0, 2, 1]),
         H("MatMul", ["r", "rt"], ["y"])],
        {"x": (1, 12)}, ["y"],
        {"w": _w(rng, 24, 12), "c": _w(rng, 24), "m": _w(rng, 24, 24),
         "s": np.array([1, 4, 6], np.int64)},
    )  # fmt: skip
    check(m)
    text = check.param_text()
    assert "InnerProduct" in text and "MatMul" in text


@pytest.mark.parametrize("rows,layer", [(1, "InnerProduct"), (8, "Gemm"), (6, "Gemm")])
def test_matmul_const_over_rows_layer_choice(check, make_model, rng, rows, layer):
    # One row: InnerProduct with the ReLU fused; rows: ncnn's Gemm (as fast or faster
    # than InnerProduct on every shape measured) and a ReLU layer.
    m = make_model(
        [H("MatMul", ["x", "w"], ["h"]), H("Add", ["h", "b"], ["a"]), H("Relu", ["a"], ["y"])],
        {"x": (1, rows, 16)}, ["y"], {"w": _w(rng, 16, 12), "b": _w(rng, 12)},
    )  # fmt: skip
    check(m)
    text = check.param_text()
    assert f"\n{layer} " in text
    assert ("ReLU" in text) == (layer == "Gemm")


@pytest.mark.parametrize("rows,layer,term", [(1, "InnerProduct", 8), (8, "Gemm", 18), (6, "Gemm", 18)])
def test_int8_quantizes_inner_product_and_gemm(check, make_model, rng, rows, layer, term):
    # One vector: InnerProduct INT8. Rows: Gemm INT8 at any row count (InnerProduct's
    # INT8 path over rows is slow), as in FP32.
    m = make_model(
        [H("MatMul", ["x", "w"], ["h"]), H("Add", ["h", "b"], ["y"])],
        {"x": (1, rows, 16)}, ["y"], {"w": _w(rng, 16, 12), "b": _w(rng, 12)},
    )  # fmt: skip
    calib = [{"x": rng.standard_normal((1, rows, 16)).astype(np.float32)} for _ in range(4)]
    check(m, precision="int8", calib=calib)  # cos >= 0.99 against onnxruntime
    line = next(x for x in check.param_text().splitlines() if x.startswith(layer + " "))
    assert re.search(rf" {term}=2(\s|$)", line), line
    assert not check.artifact.meta.get("warnings")


def test_int8_build_names_the_layers_it_leaves_in_float(check, make_model, rng):
    m = make_model(
        [H("ConvTranspose", ["x", "w"], ["d"], strides=[2, 2]), H("Conv", ["d", "k"], ["y"])],
        {"x": (1, 4, 5, 5)}, ["y"], {"w": _w(rng, 4, 6, 2, 2), "k": _w(rng, 8, 6, 3, 3)},
    )  # fmt: skip
    calib = [{"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)} for _ in range(4)]
    check(m, precision="int8", calib=calib)
    warnings = " ".join(check.artifact.meta.get("warnings", []))
    assert "Deconvolution x1" in warnings and "stay FP32" in warnings


def test_batchnorm_over_rows_stays_apart_from_inner_product(check, make_model, rng):
    # BatchNorm over axis 1 of [1, rows, n] scales each row; it must not be folded
    # into the Gemm's per-output weights, even when rows == n.
    m = make_model(
        [H("MatMul", ["x", "w"], ["h"]), H("BatchNormalization", ["h", "s", "bb", "mu", "var"], ["y"])],
        {"x": (1, 8, 16)}, ["y"],
        {"w": _w(rng, 16, 8), "s": _w(rng, 8) + 1.5, "bb": _w(rng, 8), "mu": _w(rng, 8),
         "var": np.abs(_w(rng, 8)) + 0.5},
    )  # fmt: skip
    check(m)
    assert "Gemm" in check.param_text() and "BatchNorm" in check.param_text()


@pytest.mark.parametrize(
    "op,attrs",
    [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}),
     ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("Elu", {"alpha": 0.7}),
     ("Softplus", {}), ("Erf", {}), ("Mish", {}), ("Abs", {}), ("Neg", {}), ("Exp", {}),
     ("Sin", {}), ("Floor", {}), ("Softsign", {})],
)  # fmt: skip
def test_activations(check, make_model, op, attrs):
    check(make_model([H(op, ["x"], ["y"], **attrs)], {"x": (1, 3, 5, 7)}, ["y"], opset=18))


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu_exact_and_tanh(check, make_model, approx):
    m = make_model([H("Gelu", ["x"], ["y"], approximate=approx)], {"x": (1, 6, 7)}, ["y"], opset=20)
    check(m)
    assert (" 0=1" in check.param_text()) == (approx == "tanh")


def test_clip_prelu(check, make_model, rng):
    m = make_model(
        [H("Clip", ["x", "lo", "hi"], ["c"]), H("PRelu", ["c", "s"], ["y"])],
        {"x": (1, 4, 3, 3)}, ["y"],
        {"lo": np.array(-0.5, np.float32), "hi": np.array(0.8, np.float32),
         "s": _w(rng, 4, 1, 1)},
    )  # fmt: skip
    check(m)
    assert "PReLU" in check.param_text()


def test_clip_bounds_as_one_element_tensors(check, make_model):
    # Exporters also write min/max as shape [1]; onnxruntime accepts them (was a TypeError).
    m = make_model(
        [H("Clip", ["x", "lo", "hi"], ["y"])],
        {"x": (1, 4, 3, 3)}, ["y"],
        {"lo": np.array([-0.5], np.float32), "hi": np.array([0.25], np.float32)},
    )  # fmt: skip
    check(m)
    assert re.search(r"\nClip .* 0=-5\.0+e-01 1=2\.5", check.param_text())


def test_swish_and_mish_patterns(check, make_model):
    m = make_model(
        [H("Sigmoid", ["x"], ["s"]), H("Mul", ["x", "s"], ["sw"]),
         H("Softplus", ["sw"], ["sp"]), H("Tanh", ["sp"], ["t"]), H("Mul", ["sw", "t"], ["y"])],
        {"x": (1, 4, 5, 5)}, ["y"],
    )  # fmt: skip
    check(m)
    text = check.param_text()
    assert "Swish" in text and "Mish" in text


@pytest.mark.parametrize(
    "pool",
    [H("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
     H("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
     H("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0]),
     H("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
       count_include_pad=1),
     H("GlobalAveragePool", ["x"], ["y"]), H("GlobalMaxPool", ["x"], ["y"])],
)  # fmt: skip
def test_pooling(check, make_model, pool):
    check(make_model([pool], {"x": (1, 3, 10, 11)}, ["y"]))
    assert "Reshape" not in check.param_text()  # a 4-D tensor is pooled as the Mat it is


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(1, 3, 7), (1, 3, 4, 5, 6)])
def test_global_pooling_1d_3d(check, make_model, op, shape):
    check(make_model([H(op, ["x"], ["y"])], {"x": shape}, ["y"]))


def test_binary_broadcasting(check, make_model, rng):
    m = make_model(
        [H("Add", ["x", "c1"], ["a"]), H("Mul", ["a", "c2"], ["b"]),
         H("Sub", ["k", "b"], ["d"]), H("Div", ["d", "z"], ["e"]),
         H("Max", ["e", "c3"], ["f"]), H("Pow", ["f", "two"], ["g"]),
         H("Min", ["g", "z"], ["y"])],
        {"x": (1, 3, 4, 5), "z": (1, 1, 4, 1)}, ["y"],
        {"c1": _w(rng, 3, 1, 1), "c2": _w(rng, 5), "k": np.array(2.0, np.float32),
         "c3": _w(rng, 1, 3, 4, 5), "two": np.array(2.0, np.float32)},
    )  # fmt: skip
    feeds = {"x": _w(rng, 1, 3, 4, 5), "z": (np.abs(_w(rng, 1, 1, 4, 1)) + 0.5)}
    check(m, feeds)


def test_norms(check, make_model, rng):
    m = make_model(
        [H("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"]),
         H("InstanceNormalization", ["bn", "s", "b"], ["inn"]),
         H("GroupNormalization", ["inn", "s", "b"], ["gn"], num_groups=2),
         H("LayerNormalization", ["gn", "ls", "lb"], ["y"], axis=-1)],
        {"x": (1, 4, 5, 6)}, ["y"],
        {"s": _w(rng, 4), "b": _w(rng, 4), "m": _w(rng, 4),
         "v": np.abs(_w(rng, 4)) + 0.5, "ls": _w(rng, 6), "lb": _w(rng, 6)},
        opset=21,
    )  # fmt: skip
    check(m)
    text = check.param_text()
    assert "LayerNorm" in text and " 0=6" in text  # affine_size always written


def test_shape_ops(check, make_model):
    m = make_model(
        [H("Split", ["x", "sp"], ["a", "b"], axis=1),
         H("Concat", ["b", "a"], ["c"], axis=2),
         H("Slice", ["c", "st", "en", "ax", "steps"], ["s"]),
         H("Transpose", ["s"], ["t"], perm=[0, 3, 1, 2]),
         H("Flatten", ["t"], ["f"], axis=2),
         H("Unsqueeze", ["f", "ua"], ["u"]),
         H("Squeeze", ["u", "ua"], ["g"]),
         H("Gather", ["g", "idx"], ["y"], axis=1)],
        {"x": (1, 6, 4, 5)}, ["y"],
        {"sp": np.array([3, 3], np.int64), "st": np.array([1, 4], np.int64),
         "en": np.array([7, 0], np.int64), "ax": np.array([2, 3], np.int64),
         "steps": np.array([2, -1], np.int64), "ua": np.array([1], np.int64),
         "idx": np.array([3, 0, 5], np.int64)},
    )  # fmt: skip
    check(m)
    assert "Permute" in check.param_text()


def test_softmax_axes_and_reduce(check, make_model):
    m = make_model(
        [H("Softmax", ["x"], ["s1"], axis=1), H("Softmax", ["s1"], ["s2"], axis=-1),
         H("ReduceMean", ["s2", "ax"], ["r"], keepdims=1),
         H("ReduceSum", ["r", "ax2"], ["y"], keepdims=0)],
        {"x": (1, 3, 4, 5)}, ["y"],
        {"ax": np.array([2], np.int64), "ax2": np.array([1, 3], np.int64)}, opset=18,
    )  # fmt: skip
    check(m)


@pytest.mark.parametrize(
    "mode,ctm",
    [("nearest", "asymmetric"), ("linear", "half_pixel"), ("linear", "align_corners"),
     ("cubic", "half_pixel")],
)  # fmt: skip
def test_resize(check, make_model, mode, ctm):
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    m = make_model(
        [H("Resize", ["x", "", "sc"], ["y"], **attrs)], {"x": (1, 3, 5, 6)}, ["y"],
        {"sc": np.array([1, 1, 2, 2], np.float32)},
    )  # fmt: skip
    check(m)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad(check, make_model, mode):
    m = make_model(
        [H("Pad", ["x", "p", "v"], ["y"], mode=mode)], {"x": (1, 3, 5, 6)}, ["y"],
        {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "v": np.array(0.5, np.float32)},
    )  # fmt: skip
    check(m)


def test_depth_space(check, make_model):
    m = make_model(
        [H("DepthToSpace", ["x"], ["d"], blocksize=2, mode="CRD"),
         H("SpaceToDepth", ["d"], ["y"], blocksize=2)],
        {"x": (1, 8, 3, 4)}, ["y"],
    )  # fmt: skip
    check(m)


def test_attention_block(check, make_model, rng):
    # MatMul-Softmax-MatMul over heads, as exported from PyTorch.
    m = make_model(
        [H("MatMul", ["x", "wq"], ["q"]), H("MatMul", ["x", "wk"], ["k"]),
         H("MatMul", ["x", "wv"], ["v"]),
         H("Reshape", ["q", "hs"], ["q2"]), H("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
         H("Reshape", ["k", "hs"], ["k2"]), H("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
         H("Reshape", ["v", "hs"], ["v2"]), H("Transpose", ["v2"], ["v3"], perm=[0, 2, 1, 3]),
         H("MatMul", ["q3", "k3"], ["a"]), H("Mul", ["a", "sc"], ["a2"]),
         H("Softmax", ["a2"], ["p"], axis=-1), H("MatMul", ["p", "v3"], ["o"]),
         H("Transpose", ["o"], ["o2"], perm=[0, 2, 1, 3]),
         H("Reshape", ["o2", "bs"], ["y"])],
        {"x": (1, 7, 16)}, ["y"],
        {"wq": _w(rng, 16, 16), "wk": _w(rng, 16, 16), "wv": _w(rng, 16, 16),
         "hs": np.array([1, 7, 4, 4], np.int64), "bs": np.array([1, 7, 16], np.int64),
         "sc": np.array(0.5, np.float32)},
    )  # fmt: skip
    check(m)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent(check, make_model, rng, op, direction):
    dirs = 2 if direction == "bidirectional" else 1
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    hid, inp, seq = 5, 3, 6
    attrs = {"hidden_size": hid, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    outs = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    states = ["", "h0"] + (["c0"] if op == "LSTM" else [])
    m = make_model(
        [H(op, ["x", "w", "r", "b", *states], outs, **attrs)],
        {"x": (seq, 1, inp), "h0": (dirs, 1, hid), **({"c0": (dirs, 1, hid)} if op == "LSTM" else {})},
        outs,
        {"w": _w(rng, dirs, g * hid, inp), "r": _w(rng, dirs, g * hid, hid),
         "b": _w(rng, dirs, 2 * g * hid)},
    )  # fmt: skip
    check(m)
    assert op in check.param_text()


def test_training_mode_dropout_is_refused(make_model, tmp_path):
    from mconv.errors import UnsupportedOpsError
    from mconv.targets import get_target
    from mconv.targets.base import BuildOptions

    m = make_model(
        [H("Dropout", ["x", "r", "t"], ["y"], name="drop")], {"x": (1, 4, 3, 3)}, ["y"],
        {"r": np.array(0.5, np.float32), "t": np.array(True)},
    )  # fmt: skip
    with pytest.raises(UnsupportedOpsError, match="training-mode Dropout"):
        get_target("ncnn").write(m, tmp_path, "m", BuildOptions())


@pytest.mark.parametrize("opset", [13, 17, 19, 21])
def test_int8_weights_behind_dequantize_linear_are_folded(make_model, rng, tmp_path, opset):
    # A weight-quantized model (int8 weights, DequantizeLinear per output channel and
    # per tensor) as quantizers export it at opset 13-21. onnx's reference evaluator
    # has DequantizeLinear only from version 19; the writer must still fold it. The
    # reference is the float twin (weights dequantized here): onnxruntime's optimizer
    # runs DequantizeLinear -> MatMul as an integer kernel (~4e-3 off FP32).
    from mconv.metrics import compare_outputs, default_tolerance
    from mconv.targets.base import BuildOptions
    from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime

    w = rng.integers(-127, 128, size=(8, 4, 3, 3)).astype(np.int8)
    ws = (rng.random(8) * 0.02 + 0.005).astype(np.float32)
    m = rng.integers(-127, 128, size=(8, 5)).astype(np.int8)
    ms = np.float32(0.03)
    tail = [H("GlobalAveragePool", ["c"], ["p"]), H("Flatten", ["p"], ["f"]), H("MatMul", ["f", "mf"], ["y"])]
    conv = H("Conv", ["x", "wf"], ["c"], pads=[1, 1, 1, 1])
    q = make_model(
        [H("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=0), conv,
         H("DequantizeLinear", ["m", "ms"], ["mf"]), *tail],
        {"x": (1, 4, 10, 10)}, ["y"], {"w": w, "ws": ws, "wz": np.zeros(8, np.int8), "m": m, "ms": ms},
        opset=opset,
    )  # fmt: skip
    twin = make_model(
        [conv, *tail], {"x": (1, 4, 10, 10)}, ["y"],
        {"wf": w.astype(np.float32) * ws[:, None, None, None], "mf": m.astype(np.float32) * ms},
    )  # fmt: skip
    feeds = {"x": rng.standard_normal((1, 4, 10, 10)).astype(np.float32)}
    outs, art = convert_and_run(q, [feeds], tmp_path / "q", BuildOptions())
    comp = compare_outputs(run_onnxruntime(twin, [feeds]), outs, default_tolerance("fp32"))
    assert comp.passed, comp.summary()
    text = art.main.read_text()
    assert "Convolution " in text and "InnerProduct" in text and "Dequantize" not in text


def test_gathernd_with_constant_index_tuples(check, make_model, rng):
    """The dynamo exporter's mask[:, None, None, :] (BERT): GatherND of (0, j) tuples."""
    t = 12
    row = np.stack([np.zeros(t, np.int64), np.arange(t)], -1).reshape(1, 1, 1, t, 2)
    m = make_model(
        [H("GatherND", ["mask", "idx"], ["g"]), H("Mul", ["g", "s"], ["y"])],
        {"mask": (1, t), "s": (1, 2, 3, t)}, ["y"], {"idx": row},
    )  # fmt: skip
    check(m)
    types = [line.split()[0] for line in check.param_text().splitlines()[2:]]
    assert "Concat" not in types and "Crop" not in types, types  # the whole row: a view, no copy


def test_gathernd_scattered_and_negative_tuples(check, make_model, rng):
    idx = np.array([[[1, -1], [0, 2]], [[2, 0], [1, 1]]], np.int64)  # (2, 2, 2): rows of x[i, j, :]
    m = make_model([H("GatherND", ["x", "idx"], ["y"])], {"x": (3, 4, 5)}, ["y"], {"idx": idx})
    check(m)


def test_gathernd_with_computed_indices_is_refused(make_model):
    from mconv.errors import UnsupportedOpsError
    from mconv.targets.ncnn.writer import lower_model

    m = make_model([H("Cast", ["i"], ["ii"], to=7), H("GatherND", ["x", "ii"], ["y"])],
                   {"x": (3, 4), "i": (2, 2)}, ["y"])  # fmt: skip
    with pytest.raises(UnsupportedOpsError, match="computed indices"):
        lower_model(m)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}])
def test_col2im_is_one_fold_layer(check, make_model, rng, attrs):
    kh, kw, c, (ih, iw) = 3, 2, 4, (7, 6)
    s, p, d = attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0]), attrs.get("dilations", [1, 1])
    oh = (ih + p[0] + p[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (iw + p[1] + p[3] - d[1] * (kw - 1) - 1) // s[1] + 1
    m = make_model(
        [H("Col2Im", ["x", "image", "block"], ["y"], **attrs)],
        {"x": (1, c * kh * kw, oh * ow)}, ["y"],
        {"image": np.array([ih, iw], np.int64), "block": np.array([kh, kw], np.int64)}, opset=18,
    )  # fmt: skip
    check(m)
    assert "Fold" in check.param_text()


def test_concat_with_more_axes_than_a_mat_and_a_constant_part(check, make_model, rng):
    m = make_model(
        [H("Reshape", ["x", "s5"], ["x5"]), H("Concat", ["x5", "c", "x5"], ["y5"], axis=2),
         H("Reshape", ["y5", "s2"], ["y"])],
        {"x": (1, 720)}, ["y"],
        {"s5": np.array([2, 3, 4, 5, 6], np.int64), "c": _w(rng, 2, 3, 1, 5, 6),
         "s2": np.array([1, 2 * 3 * 9 * 5 * 6], np.int64)},
    )  # fmt: skip
    check(m)


@pytest.mark.parametrize("shape_b", [(6, 5), (3, 6, 5), (2, 3, 6, 5)])
def test_matmul_of_a_transposed_operand_reads_it_as_transb(check, make_model, rng, shape_b):
    """v @ attn^T (YOLO12's area attention): no Permute copies the operand."""
    perm = list(range(len(shape_b)))
    perm[-2:] = perm[-1], perm[-2]
    shape_a = (*shape_b[:-2], 4, 5)
    m = make_model(
        [H("Transpose", ["b"], ["bt"], perm=perm), H("MatMul", ["a", "bt"], ["y"])],
        {"a": shape_a, "b": shape_b}, ["y"],
    )  # fmt: skip
    check(m)
    lines = check.param_text().splitlines()[2:]
    assert not any(line.startswith("Permute") for line in lines)
    assert any(line.startswith("MatMul") and line.rstrip().endswith("0=1") for line in lines)


@pytest.mark.parametrize(
    "equation, shapes",
    [
        ("byhwc,hkc->byhwk", [(1, 1, 5, 6, 8), (5, 4, 8)]),  # MViTv2's relative positions (constant table)
        ("byhwc,wkc->byhwk", [(1, 1, 5, 6, 8), (6, 4, 8)]),
        ("bhqd,bhkd->bhqk", [(1, 2, 5, 8), (1, 2, 7, 8)]),  # attention scores
        ("ij,jk", [(3, 4), (4, 5)]),  # implicit output
        ("bij->bji", [(1, 3, 4)]),
        ("ij->i", [(3, 4)]),  # a sum
        ("ij,kl->ik", [(3, 4), (5, 6)]),  # sums within each operand, then an outer product
        ("i,i", [(5,), (5,)]),  # inner product
    ],
)
def test_einsum_as_permutes_and_one_matmul(check, make_model, rng, equation, shapes):
    names = ["a", "b"][: len(shapes)]
    inits = {}
    inputs = {names[0]: shapes[0]}
    if len(shapes) == 2:
        if equation.startswith("byhwc"):
            inits["b"] = _w(rng, *shapes[1])
        else:
            inputs["b"] = shapes[1]
    m = make_model([H("Einsum", names, ["y"], equation=equation)], inputs, ["y"], inits)
    check(m)
    assert "Einsum" not in {line.split()[0] for line in check.param_text().splitlines()[2:]}


def test_einsum_with_a_diagonal_is_refused(make_model):
    from mconv.errors import UnsupportedOpsError
    from mconv.targets.ncnn.writer import lower_model

    m = make_model([H("Einsum", ["a"], ["y"], equation="ii->i")], {"a": (3, 3)}, ["y"])
    with pytest.raises(UnsupportedOpsError, match="repeated letter"):
        lower_model(m)


def test_reduction_whose_result_still_has_more_axes_than_a_mat(check, make_model, rng):
    m = make_model(
        [H("Reshape", ["x", "s6"], ["x6"]), H("ReduceMax", ["x6"], ["r"], axes=[2], keepdims=0),
         H("Reshape", ["r", "s2"], ["y"])],
        {"x": (1, 720)}, ["y"],
        {"s6": np.array([2, 3, 4, 5, 3, 2], np.int64), "s2": np.array([1, 180], np.int64)},
    )  # fmt: skip
    check(m)
