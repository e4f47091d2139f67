"""Q/DQ INT8 quantization (``mconv.targets.qdq``), built and verified on the CPU with
onnxruntime: cosine >= 0.99 against FP32 on calibration-like inputs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from mconv.errors import UsageError
from mconv.metrics import compare_arrays
from mconv.targets.qdq import qdq_summary, quantize_qdq
from tests.models import randomized_light_model

ort = pytest.importorskip("onnxruntime")
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def tiny_convnet(path: str, *, dynamic: bool = False) -> onnx.ModelProto:
    """A small conv net exported from torch (legacy exporter, opset 17)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    torch.onnx.export(
        net,
        torch.randn(1, 3, 32, 32),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
    )
    return onnx.load(path)


def samples(name: str, shape: tuple[int, ...], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def min_cosine(fp32: onnx.ModelProto, q: onnx.ModelProto, feeds: list[dict]) -> float:
    a = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 1.0
    for f in feeds:
        for x, y in zip(a.run(None, f), b.run(None, f), strict=True):
            # compare_arrays treats all-zero outputs explicitly (a bare x@y/|x||y| would be NaN).
            worst = min(worst, compare_arrays("out", x, y).cosine)
    return worst


def per_channel_weight_dq(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """DequantizeLinear nodes reading int8 weights with one scale per output channel."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        w = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        scale = inits.get(n.input[1]) if w is not None else None
        if w is not None and w.data_type == onnx.TensorProto.INT8 and scale is not None:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if len(scale.dims) == 1 and scale.dims[0] == w.dims[axis] > 1:
                out.append(n)
    return out


@pytest.fixture(scope="module")
def convnet(tmp_path_factory) -> onnx.ModelProto:
    return tiny_convnet(str(tmp_path_factory.mktemp("qdq") / "net.onnx"))


def test_convnet_qdq_is_per_channel_and_close_to_fp32(convnet):
    q = quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 16, seed=0))
    onnx.checker.check_model(q)
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = per_channel_weight_dq(q)
    assert len(weights) >= 2  # both convolutions
    summary = qdq_summary(q)
    assert summary["per_channel_weights"] == len(weights)
    # TensorRT takes only zero points of 0: activations and weights are symmetric.
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    zps = [
        inits[n.input[2]]
        for n in q.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    assert zps and all(np.all(z == 0) for z in zps)
    assert min_cosine(convnet, q, samples("input", (1, 3, 32, 32), 8, seed=1)) >= 0.99


@pytest.mark.parametrize("method", ["entropy", "percentile", "kl"])
def test_calibration_methods(convnet, method):
    q = quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 8, seed=0), method=method)
    assert qdq_summary(q)["QuantizeLinear"] > 0
    assert min_cosine(convnet, q, samples("input", (1, 3, 32, 32), 4, seed=2)) >= 0.99


def test_biases_stay_float_for_tensorrt(convnet):
    q = quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 4, seed=0))
    inits = {t.name: t for t in q.graph.initializer}
    dq_inputs = [inits[n.input[0]] for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert all(t.data_type == onnx.TensorProto.INT8 for t in dq_inputs)


def test_ignore_keeps_an_op_type_in_float(convnet):
    q = quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 4, seed=0), ignore=["Gemm"])
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    inits = {t.name: t for t in q.graph.initializer}
    # The weight stays a float initializer: no DequantizeLinear in front of it.
    assert inits[gemm.input[1]].data_type == onnx.TensorProto.FLOAT
    assert len(per_channel_weight_dq(q)) == 2  # the convolutions only


def test_ignore_unknown_name_is_a_usage_error(convnet):
    with pytest.raises(UsageError, match="NoSuchOp"):
        quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 2, seed=0), ignore=["NoSuchOp"])


def test_no_calibration_data_is_a_usage_error(convnet):
    with pytest.raises(UsageError, match="--calib"):
        quantize_qdq(convnet, [])


def test_unknown_method_is_a_usage_error(convnet):
    with pytest.raises(UsageError, match="minmax"):
        quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 2, seed=0), method="magic")


def test_samples_missing_an_input_is_a_usage_error(convnet):
    with pytest.raises(UsageError, match="input"):
        quantize_qdq(convnet, [{"other": np.zeros((1, 3, 32, 32), np.float32)}])


def test_input_model_is_not_modified(convnet):
    before = convnet.SerializeToString()
    quantize_qdq(convnet, samples("input", (1, 3, 32, 32), 2, seed=0))
    assert convnet.SerializeToString() == before


@pytest.mark.slow
def test_light_squeezenet_opset9_is_lifted_and_quantized():
    # Folded ConstantOfShape weights, then randomized: the shipped weights are all equal.
    model = randomized_light_model("squeezenet")
    assert model.opset_import[0].version == 9
    inits = {t.name for t in model.graph.initializer}
    name = next(i.name for i in model.graph.input if i.name not in inits)
    rng = np.random.default_rng(0)
    calib = [{name: rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    q = quantize_qdq(model, calib)
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert len(per_channel_weight_dq(q)) >= 10
    test = [{name: rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)} for _ in range(2)]
    assert min_cosine(model, q, test) >= 0.99


def test_attention_scores_stay_float_and_a_masked_encoder_stays_close():
    """In a graph with attention only MatMul/Gemm/Conv are quantized: the padding mask and
    Softmax, the norms and GELU stay float (on BERT-base and ViT-B/16 this is what keeps
    INT8 usable)."""
    from tests.torch_models import tiny_bert_onnx

    model = tiny_bert_onnx(depth=4, dim=96)
    rng = np.random.default_rng(0)

    def feeds(n: int) -> list[dict[str, np.ndarray]]:
        out = []
        for _ in range(n):
            mask = np.ones((1, 16), np.int64)
            mask[0, rng.integers(8, 16) :] = 0  # padded tokens
            out.append({"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int64), "attention_mask": mask})
        return out

    q = quantize_qdq(model, feeds(16))
    producer = {o: n for n in q.graph.node for o in n.output}
    softmaxes = [n for n in q.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 4
    for sm in softmaxes:
        add = producer[sm.input[0]]  # scores + mask, straight into the Softmax
        assert add.op_type == "Add"
        assert all(getattr(producer.get(x), "op_type", None) != "DequantizeLinear" for x in add.input)
    assert sum(n.op_type == "MatMul" and producer[n.input[0]].op_type == "DequantizeLinear" for n in q.graph.node)
    consumers: dict[str, list[str]] = {}
    for n in q.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n.op_type)
    # No Q/DQ in front of the norms, GELU's Erf, the mask or the Softmax.
    for dq in (n for n in q.graph.node if n.op_type == "DequantizeLinear"):
        floats = {"LayerNormalization", "Softmax", "Erf", "Where"}
        assert not floats & set(consumers.get(dq.output[0], [])), consumers[dq.output[0]]
    assert min_cosine(model, q, feeds(4)) >= 0.99
