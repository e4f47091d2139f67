"""LiteRT target: real graphs written by mconv's own TFLite writer, run by LiteRT's
interpreter (ai-edge-litert), compared with onnxruntime on the source ONNX at the
project tolerances (the shared gate in mconv.metrics).

Models: onnx's light models (weights folded and re-drawn from a seed, the final
Softmax made an Identity so outputs are logits, as in test_openvino.py), small
torch exports (a ResNet-style CNN, a tiny ViT, a YOLO-style head) and one-node
graphs for the rules with their own arithmetic (padding, pools, LRN, resize,
slices).
"""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.errors import EXIT_CONVERSION, EXIT_USAGE, UnsupportedOpsError
from mconv.metrics import compare_outputs, default_tolerance
from mconv.passes import optimize
from mconv.targets import BuildOptions, get_target
from tests.conftest import assert_clean_error
from tests.models import make_graph_model, randomized_light_model

pytest.importorskip("ai_edge_litert.interpreter")
ort = pytest.importorskip("onnxruntime")

THREADS = 2


# ---------------------------------------------------------------------------
# Models and helpers


@functools.cache
def _light_bytes(name: str) -> bytes:
    model, _ = optimize(randomized_light_model(name))
    graph = model.graph
    for node in graph.node:
        if node.op_type == "Softmax" and node.output[0] == graph.output[0].name:
            node.op_type = "Identity"
            del node.attribute[:]
    return model.SerializeToString()


def light(name: str) -> onnx.ModelProto:
    return onnx.load_from_string(_light_bytes(name))


def _export(net, shape, **kw) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(*shape),), buf, opset_version=17, dynamo=False, **kw)
    return onnx.load_from_string(buf.getvalue())


@functools.cache
def _torch_cnn() -> bytes:
    from tests.models import small_cnn

    m = _export(small_cnn(), (1, 3, 32, 32), input_names=["image"], output_names=["logits"])
    return optimize(m)[0].SerializeToString()


@functools.cache
def _yolo_head() -> bytes:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Head(nn.Module):
        """Strided convs with SiLU, nearest and bilinear upsampling, concat, split, sigmoid."""

        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1)
            self.c3 = nn.Conv2d(48, 18, 1)
            self.act = nn.SiLU()

        def forward(self, x):
            a = self.act(self.c1(x))
            b = self.act(self.c2(a))
            u = nn.functional.interpolate(b, scale_factor=2.0, mode="nearest")
            u = u + 0.5 * nn.functional.interpolate(b, scale_factor=2.0, mode="bilinear")
            xy, wh, conf = self.c3(torch.cat([a, u], 1)).split([2, 2, 14], 1)
            return torch.cat([xy.sigmoid() * 2, wh.exp(), conf.sigmoid()], 1).flatten(2).permute(0, 2, 1)

    torch.manual_seed(0)
    m = _export(Head(), (1, 3, 64, 64), input_names=["images"], output_names=["out"])
    return optimize(m)[0].SerializeToString()


@functools.cache
def _vit() -> bytes:
    pytest.importorskip("torch")
    from tests.torch_models import tiny_vit_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimize(tiny_vit_onnx())[0].SerializeToString()


def feeds_for(model: onnx.ModelProto, count: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        f = {}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            shape = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
            f[vi.name] = rng.standard_normal(shape).astype(np.float32)
        out.append(f)
    return out


def ort_run(model: onnx.ModelProto, feeds) -> list[dict[str, np.ndarray]]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, f), strict=True)) for f in feeds]


def build(model: onnx.ModelProto, tmp_path: Path, precision: str = "fp32", **values):
    target = get_target("litert")
    calib = feeds_for(model, 8, seed=5) if precision == "int8" else None
    opts = BuildOptions(precision=precision, calib=calib, target=target.make_options(values, precision=precision))
    return target.write(onnx.load_from_string(model.SerializeToString()), tmp_path, "model", opts)


def check(model: onnx.ModelProto, tmp_path: Path, precision: str = "fp32", count: int = 2, **values):
    art = build(model, tmp_path, precision, **values)
    feeds = feeds_for(model, count)
    refs = ort_run(model, feeds)
    runner = get_target("litert").runner(art, threads=THREADS)
    gots = [runner.infer(f) for f in feeds]
    comp = compare_outputs(refs, gots, default_tolerance(precision))
    assert comp.passed, comp.summary()
    return art, refs, gots


def one_node(node: onnx.NodeProto, in_shape, out_shape, inits=()) -> onnx.ModelProto:
    return make_graph_model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )


# ---------------------------------------------------------------------------
# FP32 on real graphs


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1", "densenet121", "resnet50"])
def test_light_model_fp32(name, tmp_path):
    art, _, _ = check(light(name), tmp_path, count=1)
    assert art.main.read_bytes()[4:8] == b"TFL3"


def test_lazy_weights_and_released_builder_write_the_same_bytes():
    """What write() does to save memory (weights read where lowered, each dropped once
    copied into the builder) against reading every weight first and keeping the graph."""
    from mconv.targets.litert.flatbuf import serialise
    from mconv.targets.litert.writer import lower_model

    model = light("resnet50")  # weights above fold.LAZY_BYTES, so some are read lazily
    eager = bytes(serialise(lower_model(model, mode="eager").graph))
    lowered = lower_model(model)
    assert bytes(serialise(lowered.graph, release=True)) == eager
    assert all(t.data is None for t in lowered.graph.tensors)


def test_torch_cnn_fp32_keeps_transposes_at_the_edges(tmp_path):
    model = onnx.load_from_string(_torch_cnn())
    art, _, _ = check(model, tmp_path)
    import tflite

    m = tflite.Model.GetRootAsModel(art.main.read_bytes(), 0)
    codes = [
        m.OperatorCodes(m.Subgraphs(0).Operators(i).OpcodeIndex()).BuiltinCode()
        for i in range(m.Subgraphs(0).OperatorsLength())
    ]
    # One TRANSPOSE into NHWC; the pooled [N,1,1,C] leaves by a RESHAPE; BN folded, ReLUs fused.
    assert codes.count(tflite.BuiltinOperator.TRANSPOSE) == 1
    assert tflite.BuiltinOperator.RELU not in codes


def test_tiny_vit_fp32(tmp_path):
    check(onnx.load_from_string(_vit()), tmp_path)


def test_yolo_style_head_fp32(tmp_path):
    check(onnx.load_from_string(_yolo_head()), tmp_path)


def test_nhwc_io_layout_takes_nhwc_feeds(tmp_path):
    model = onnx.load_from_string(_torch_cnn())
    art = build(model, tmp_path, io_layout="nhwc")
    assert art.meta["inputs"][0]["shape"] == [1, 32, 32, 3]
    feeds = feeds_for(model)
    refs = ort_run(model, feeds)
    runner = get_target("tflite").runner(art)
    gots = [runner.infer({"image": f["image"].transpose(0, 2, 3, 1)}) for f in feeds]
    assert compare_outputs(refs, gots, default_tolerance("fp32")).passed


# ---------------------------------------------------------------------------
# Rules with their own arithmetic, one node each


def _w(shape, seed=1):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), "W")


CASES = {
    "grouped_conv": (
        helper.make_node("Conv", ["x", "W"], ["y"], group=2, pads=[1, 1, 1, 1]),
        [1, 8, 5, 5],
        [1, 6, 5, 5],
        [_w((6, 4, 3, 3))],
    ),
    "depthwise_strided_asym_pads": (
        helper.make_node("Conv", ["x", "W"], ["y"], group=8, strides=[2, 2], pads=[0, 1, 2, 1]),
        [1, 8, 7, 7],
        [1, 16, 4, 4],
        [_w((16, 1, 3, 3))],
    ),
    "maxpool_ceil": (
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        [1, 4, 8, 8],
        [1, 4, 4, 4],
        [],
    ),
    "avgpool_excl_pad": (
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        [1, 4, 8, 8],
        [1, 4, 4, 4],
        [],
    ),
    "avgpool_incl_pad": (
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        [1, 4, 8, 8],
        [1, 4, 8, 8],
        [],
    ),
    "lrn": (
        helper.make_node("LRN", ["x"], ["y"], size=5, alpha=0.5, beta=0.75, bias=2.0),
        [1, 8, 5, 5],
        [1, 8, 5, 5],
        [],
    ),
    "softmax_axis1_2d": (helper.make_node("Softmax", ["x"], ["y"], axis=1), [1, 5, 3, 3], [1, 5, 3, 3], []),
    "layernorm": (
        helper.make_node("LayerNormalization", ["x", "W"], ["y"], axis=-1, epsilon=1e-5),
        [2, 3, 8],
        [2, 3, 8],
        [_w((8,))],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule(case, tmp_path):
    check(one_node(*CASES[case]), tmp_path)


def test_slice_negative_step_and_resize_align_corners(tmp_path):
    consts = [
        numpy_helper.from_array(np.array([-1, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([-100, 4], np.int64), "ends"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([-2, 2], np.int64), "steps"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node(
            "Resize", ["x", "", "scales"], ["r"], mode="linear", coordinate_transformation_mode="align_corners"
        ),
        helper.make_node("Slice", ["r", "starts", "ends", "axes", "steps"], ["y"]),
    ]
    model = make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 2])],
        consts,
    )
    check(model, tmp_path)


# ---------------------------------------------------------------------------
# FP16


@pytest.mark.parametrize("which", ["squeezenet", "torch_cnn"])
def test_fp16_weights_dequantized(which, tmp_path):
    model = light("squeezenet") if which == "squeezenet" else onnx.load_from_string(_torch_cnn())
    art, refs, gots = check(model, tmp_path, "fp16")
    fp32 = build(model, tmp_path / "fp32")
    assert art.meta["fp16_constants"] > 0
    assert art.main.stat().st_size < 0.6 * fp32.main.stat().st_size
    for r, g in zip(refs, gots, strict=True):
        for k in r:
            a, b = r[k].ravel().astype(np.float64), g[k].ravel().astype(np.float64)
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.9999


# ---------------------------------------------------------------------------
# INT8


@pytest.mark.parametrize("which", ["squeezenet", "torch_cnn", "yolo_head"])
def test_int8_full_integer(which, tmp_path):
    import tflite

    model = {"squeezenet": lambda: light("squeezenet"), "torch_cnn": lambda: onnx.load_from_string(_torch_cnn())}.get(
        which, lambda: onnx.load_from_string(_yolo_head())
    )()
    art, _, _ = check(model, tmp_path, "int8", count=3)
    assert art.meta["int8"]["int8_ops"] > 0
    m = tflite.Model.GetRootAsModel(art.main.read_bytes(), 0)
    sub = m.Subgraphs(0)
    types = {}
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex()).BuiltinCode()
        if code == tflite.BuiltinOperator.CONV_2D:
            w = sub.Tensors(op.Inputs(1))
            b = sub.Tensors(op.Inputs(2))
            x = sub.Tensors(op.Inputs(0))
            types["conv"] = (w.Type(), b.Type(), w.Quantization().ScaleLength(), w.Quantization().ZeroPoint(0))
            # bias scale = input scale * weight scale, per output channel
            np.testing.assert_allclose(
                b.Quantization().ScaleAsNumpy(), x.Quantization().Scale(0) * w.Quantization().ScaleAsNumpy(), rtol=1e-6
            )
        if code in (tflite.BuiltinOperator.LOGISTIC, tflite.BuiltinOperator.SOFTMAX):
            q = sub.Tensors(op.Outputs(0)).Quantization()
            assert (q.Scale(0), q.ZeroPoint(0)) == (1 / 256, -128)
    tt = tflite.TensorType
    assert types["conv"][:2] == (tt.INT8, tt.INT32) and types["conv"][2] > 1 and types["conv"][3] == 0


def test_int8_io_takes_int8_tensors(tmp_path):
    model = onnx.load_from_string(_torch_cnn())
    art, _, _ = check(model, tmp_path, "int8", int8_io=True)  # the runner (de)quantizes at the edges
    runner = get_target("litert").runner(art)
    runner.load()
    assert {d["dtype"] for d in runner.interp.get_input_details()} == {np.int8}
    assert {d["dtype"] for d in runner.interp.get_output_details()} == {np.int8}


# ---------------------------------------------------------------------------
# Refusals, CLI, recognition


def _custom_op_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_in"),
        helper.make_node("FancyOp", ["a"], ["b"], name="fancy_node", domain="com.example"),
        helper.make_node("Relu", ["b"], ["y"], name="relu_out"),
    ]
    m = make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


def test_unsupported_op_is_listed_and_nothing_is_written(cli, tmp_path):
    src = tmp_path / "custom.onnx"
    onnx.save(_custom_op_model(), src)
    assert get_target("litert").unsupported(_custom_op_model()) == {"com.example::FancyOp": ["fancy_node"]}
    with pytest.raises(UnsupportedOpsError):
        build(_custom_op_model(), tmp_path / "direct")
    out = tmp_path / "out"
    assert_clean_error(cli("build", src, "-t", "litert", "-o", out), EXIT_CONVERSION, "FancyOp")
    assert not out.exists() or not list(out.iterdir())
    r = cli("inspect", src, "-t", "tflite")
    assert "FancyOp" in r.out


def test_cli_build_verify_and_recognise(cli, tmp_path):
    src = tmp_path / "cnn.onnx"
    src.write_bytes(_torch_cnn())
    out = tmp_path / "out"
    r = cli("build", src, "-t", "tflite", "-o", out, "--json")
    assert r.code == 0, r.err
    main = out / "cnn.tflite"
    assert main.is_file() and (out / "cnn.mconv.json").is_file()
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(main.read_bytes())
    art = get_target("litert").recognise(renamed)
    assert art is not None and art.target == "litert"
    assert get_target("litert").recognise(src) is None
    r = cli("verify", src, main, renamed)
    assert r.code == 0, r.out + r.err
    bad = cli("build", src, "-t", "litert", "--option", "io_layout=chw", "-o", tmp_path / "bad")
    assert_clean_error(bad, EXIT_USAGE, "io_layout")
    calib = tmp_path / "calib"
    calib.mkdir()
    for k, f in enumerate(feeds_for(onnx.load_from_string(_torch_cnn()), 4, seed=2)):
        np.save(calib / f"{k}.npy", f["image"])
    r = cli("build", src, "-t", "litert", "--int8", "--calib", calib, "-o", tmp_path / "i8")
    assert r.code == 0, r.out + r.err
    assert (tmp_path / "i8" / "cnn.tflite").is_file()


# ---------------------------------------------------------------------------
# MediaPipe metadata


def test_mediapipe_image_classifier_matches_onnxruntime(tmp_path):
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    model = onnx.load_from_string(_torch_cnn())
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class{i}\n" for i in range(10)))
    art = build(model, tmp_path, metadata="image_classifier", mean="0.5", std="0.25", labels=str(labels))
    assert art.meta["inputs"][0]["shape"] == [1, 32, 32, 3]
    img = np.random.default_rng(3).uniform(0, 255, (32, 32, 3)).astype(np.uint8)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(art.main)), max_results=5)
    with vision.ImageClassifier.create_from_options(options) as clf:
        res = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=img))
    got = [(c.index, c.category_name, c.score) for c in res.classifications[0].categories]
    x = ((img.astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None]
    ref = ort_run(model, [{"image": x}])[0]["logits"][0]
    top = np.argsort(-ref)[:5]
    assert [g[0] for g in got] == [int(i) for i in top]
    assert [g[1] for g in got] == [f"class{i}" for i in top]
    np.testing.assert_allclose([g[2] for g in got], ref[top], rtol=1e-4, atol=1e-5)


def test_metadata_refuses_per_channel_normalization_and_wrong_labels(cli, tmp_path):
    src = tmp_path / "cnn.onnx"
    src.write_bytes(_torch_cnn())
    r = cli("build", src, "-t", "litert", "--option", "metadata=image_classifier", "--option", "mean=0.4,0.5,0.6")
    assert_clean_error(r, EXIT_USAGE, "mean")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    r = cli("build", src, "-t", "litert", "--option", "metadata=image_classifier", "--option", f"labels={labels}")
    assert_clean_error(r, EXIT_USAGE, "labels.txt", "10 classes")


def test_truncated_tflite_is_a_clean_input_error(cli, tmp_path):
    src = tmp_path / "cnn.onnx"
    src.write_bytes(_torch_cnn())
    art = build(onnx.load_from_string(_torch_cnn()), tmp_path / "a")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(art.main.read_bytes()[:3000])
    assert_clean_error(cli("verify", src, bad), EXIT_USAGE, "bad.tflite", "not a readable .tflite")


def test_bench_keeps_litert_log_lines_off_stderr(mconv_proc, tmp_path):
    """LiteRT prints an XNNPACK INFO line from C++ when a model loads: not mconv's output
    (--verbose shows it)."""
    src = tmp_path / "cnn.onnx"
    src.write_bytes(_torch_cnn())
    r = mconv_proc("build", src, "-t", "litert", "-o", tmp_path / "out")
    assert r.code == 0 and r.err == "", r.err
    r = mconv_proc("bench", tmp_path / "out" / "cnn.tflite", "--iters", "3")
    assert r.code == 0 and r.err == "", r.err
    loud = mconv_proc("bench", tmp_path / "out" / "cnn.tflite", "--iters", "3", env={"MCONV_VERBOSE": "1"})
    assert loud.code == 0 and "XNNPACK" in loud.err
