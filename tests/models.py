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
