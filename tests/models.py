"""Test models, generated from source (no binary blobs): small real PyTorch modules and
hand-built ONNX graphs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.name.removeprefix("light_").removesuffix(".onnx") for p in LIGHT_DIR.glob("light_*.onnx"))


def light_model(name: str) -> Path:
    return LIGHT_DIR / f"light_{name}.onnx"


def small_cnn():
    """A ResNet-style CNN with non-trivial BatchNorm statistics (see tests/torch_models.py)."""
    from tests.torch_models import seeded_small_cnn

    return seeded_small_cnn()


def transformer_encoder():
    """nn.TransformerEncoder (batch_first) whose traced inference graph uses the fused fast path."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def save_torchscript_cnn(path: Path) -> Path:
    import torch

    torch.jit.save(torch.jit.trace(small_cnn(), torch.randn(1, 3, 32, 32)), str(path))
    return path


def make_graph_model(nodes, inputs, outputs, initializers=(), opset: int = 17, value_info=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers), value_info=list(value_info))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def conv_bn_relu_model(channels: int = 4, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Relu, with constant weights."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "B"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    return make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])],
        inits,
    )


def qdq_conv_bn_relu_model() -> onnx.ModelProto:
    """:func:`conv_bn_relu_model` quantized by ``mconv.targets.qdq`` (Q/DQ on activations
    and weights, opset 17): a model quantized already."""
    from mconv.targets.qdq import quantize_qdq

    fp = conv_bn_relu_model()
    return quantize_qdq(fp, [random_feeds_for(fp, seed) for seed in range(4)])


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def random_feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    from mconv.data import random_feeds
    from mconv.graphinfo import graph_inputs

    return random_feeds(graph_inputs(model), seed=seed)[0]


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace float initializers with seeded random values of realistic magnitude.

    The onnx package's light models generate every weight with ConstantOfShape, so all
    weights are equal and the outputs are constant: a comparison on them proves little.
    Conv/Gemm weights get He-scaled normals, BatchNorm variances stay positive.
    """
    rng = np.random.default_rng(seed)
    var_inputs = {n.input[4] for n in model.graph.node if n.op_type == "BatchNormalization" and len(n.input) > 4}
    scale_inputs = {n.input[1] for n in model.graph.node if n.op_type == "BatchNormalization"}
    for i, t in enumerate(model.graph.initializer):
        if t.data_type != TensorProto.FLOAT or len(t.dims) == 0:
            continue
        shape = tuple(t.dims)
        if t.name in var_inputs:
            arr = rng.uniform(0.5, 2.0, shape)
        elif t.name in scale_inputs:
            arr = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        else:
            arr = rng.standard_normal(shape) * 0.1
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), t.name))
    return model


def randomized_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light model with its ConstantOfShape weights folded and then randomized."""
    from mconv.modelio import load_onnx
    from mconv.passes import optimize

    model, _ = optimize(load_onnx(light_model(name)), ["infer_shapes", "fold_constants", "eliminate_dead_nodes"])
    return randomize_weights(model, seed)


def write_big_model(path: str, gib: float, width: int = 16384, seed: int = 0) -> int:
    """Write a MatMul chain with ~``gib`` GiB of float32 weights; return the weight bytes.

    Layers alternate between width x width/2 and width/2 x width weights (512 MiB each at
    the default width), like the few huge projection matrices of a large transformer.
    """
    from mconv.modelio import save_onnx, tensor_nbytes

    half = width // 2
    per = width * half * 4
    layers = max(1, round(gib * 2**30 / per))
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i in range(layers):
        d_in, d_out = (width, half) if i % 2 == 0 else (half, width)
        w = rng.random((d_in, d_out), dtype=np.float32)
        w -= np.float32(0.5)
        w *= np.float32(2.0 / np.sqrt(width))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        del w
        bias = (rng.random(d_out, dtype=np.float32) - np.float32(0.5)) * np.float32(0.1)
        inits.append(numpy_helper.from_array(bias, f"b{i}"))
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}"),
            helper.make_node("Relu", [f"add{i}"], [f"y{i}"], name=f"relu{i}"),
        ]
        x = f"y{i}"
    g = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, width if layers % 2 == 0 else half])],
    )
    for t in inits:  # one tensor at a time: protobuf cannot copy a list over 2 GiB at once
        dst = g.initializer.add()
        dst.name, dst.data_type = t.name, t.data_type
        dst.dims.extend(t.dims)
        dst.raw_data = t.raw_data
        t.ClearField("raw_data")
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    weight_bytes = sum(tensor_nbytes(t) for t in m.graph.initializer)
    save_onnx(m, path, external=True, keep=False)
    return weight_bytes


def noisy_head_cnn(depth: int = 6, channels: int = 16, size: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A CNN whose output is ill-conditioned: float noise alone moves it by more than 1e-4.

    ``depth`` Conv + HardSwish layers, then two 1x1 heads whose weights differ by 0.1 %
    and their difference (the cancellation a residual subtraction or a sharp
    normalisation makes in real nets): a correct FP32 artifact differs from
    onnxruntime by ~2e-4 of the output's largest magnitude, and so does onnxruntime
    itself with its optimizations off.
    """
    rng = np.random.default_rng(seed)
    inits, nodes, x, cin = [], [], "x", 3
    for i in range(depth):
        w = rng.standard_normal((channels, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"conv{i}.weight"),
            numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), f"conv{i}.bias"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
            helper.make_node("HardSwish", [f"c{i}"], [f"a{i}"], name=f"act{i}"),
        ]
        x, cin = f"a{i}", channels
    wa = rng.standard_normal((channels, channels, 1, 1)) * np.sqrt(1.0 / channels)
    wb = wa * (1 + 1e-3 * rng.standard_normal(wa.shape))
    inits += [
        numpy_helper.from_array(wa.astype(np.float32), "head_a.weight"),
        numpy_helper.from_array(wb.astype(np.float32), "head_b.weight"),
    ]
    nodes += [
        helper.make_node("Conv", [x, "head_a.weight"], ["ya"], name="head_a"),
        helper.make_node("Conv", [x, "head_b.weight"], ["yb"], name="head_b"),
        helper.make_node("Sub", ["ya", "yb"], ["y"], name="diff"),
    ]
    return make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])],
        inits,
    )


def topk_detector(candidates: int = 64, keep: int = 16, classes: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A DETR-style head: per-candidate class scores and boxes, TopK over the best class score.

    ``x`` (1, 2, 4*8, 4*8): a stride-4 patch Conv makes ``candidates`` (8x8) feature
    vectors; the class head reads only the features of input channel 0, the box head
    only those of channel 1, so inputs whose channel-0 patches repeat give candidates
    with (nearly) tied scores but different boxes. Output ``dets`` (1, keep, 4 + classes):
    the kept candidates' boxes and scores, in score order.
    """
    assert candidates == 64
    rng = np.random.default_rng(seed)
    half = 8
    w = np.zeros((2 * half, 2, 4, 4), np.float32)
    w[:half, 0] = rng.standard_normal((half, 4, 4)) * 0.25
    w[half:, 1] = rng.standard_normal((half, 4, 4)) * 0.25
    wc = np.zeros((2 * half, classes), np.float32)
    wc[:half] = rng.standard_normal((half, classes))
    wb = np.zeros((2 * half, 4), np.float32)
    wb[half:] = rng.standard_normal((half, 4))
    inits = [
        numpy_helper.from_array(w, "patch.weight"),
        numpy_helper.from_array(wc, "cls.weight"),
        numpy_helper.from_array(wb, "box.weight"),
        numpy_helper.from_array(np.array([1, 2 * half, candidates], np.int64), "flat_shape"),
        numpy_helper.from_array(np.array([keep], np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "patch.weight"], ["p"], name="patch", strides=[4, 4]),
        helper.make_node("Reshape", ["p", "flat_shape"], ["pf"], name="flatten"),
        helper.make_node("Transpose", ["pf"], ["feats"], name="tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["feats", "cls.weight"], ["logits"], name="cls"),
        helper.make_node("Sigmoid", ["logits"], ["scores"], name="cls_sigmoid"),
        helper.make_node("MatMul", ["feats", "box.weight"], ["box_raw"], name="box"),
        helper.make_node("Sigmoid", ["box_raw"], ["boxes"], name="box_sigmoid"),
        helper.make_node("ReduceMax", ["scores"], ["best"], name="best", axes=[2], keepdims=0),
        helper.make_node("TopK", ["best", "k"], ["top_v", "top_i"], name="topk", axis=1),
        helper.make_node("Squeeze", ["top_i"], ["idx"], name="idx", axes=None),
        helper.make_node("Gather", ["boxes", "idx"], ["kept_boxes"], name="gather_boxes", axis=1),
        helper.make_node("Gather", ["scores", "idx"], ["kept_scores"], name="gather_scores", axis=1),
        helper.make_node("Concat", ["kept_boxes", "kept_scores"], ["dets"], name="dets", axis=2),
    ]
    del nodes[9].attribute[:]  # Squeeze-13: the axes are an input; none -> drop every 1-dim
    return make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 32, 32])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, keep, 4 + classes])],
        inits,
    )


def tied_detector_inputs(seed: int = 0, jitter: float = 1e-6) -> dict[str, np.ndarray]:
    """Inputs for :func:`topk_detector` whose channel 0 repeats one 4x4 patch per pair of
    candidates (scores tied up to ``jitter``) while channel 1 is random (distinct boxes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, 32, 32)).astype(np.float32)
    patches = rng.standard_normal((32, 4, 4)).astype(np.float32)
    for c in range(64):
        r, q = divmod(c, 8)
        x[0, 0, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] = patches[c // 2] + jitter * rng.standard_normal((4, 4))
    return {"x": x}


def custom_op_model() -> onnx.ModelProto:
    """Relu -> com.example::FancyOp -> Relu: no runtime has a rule for the middle op."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="relu_in"),
        helper.make_node("FancyOp", ["y"], ["z"], name="fancy_node", domain="com.example"),
        helper.make_node("Relu", ["z"], ["out"], name="relu_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
