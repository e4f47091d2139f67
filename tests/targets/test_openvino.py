"""OpenVINO target: real graphs written as IR, run by the OpenVINO runtime, compared
with onnxruntime on the source ONNX at the project tolerances.

Models: the light models shipped in the onnx package (``onnx/backend/test/data/light``)
and a small torch-exported CNN. The light models are opset 9 with every weight made
by ``ConstantOfShape`` (value 0.02 everywhere): ``onnxsim.simplify`` folds them, and
the weights are then re-drawn from a fixed seed. With constant weights every class
score is equal, so a comparison proves nothing (and the softmax over equal, huge
logits is ill-conditioned: onnxruntime and OpenVINO legitimately disagree on it).

Random deep nets still map every input to nearly the same output (post-ReLU features
share a large common component), which flatters cosine metrics. So the final Softmax
becomes Identity (outputs are logits, not saturated one-hots), the classifier's rows
are centred, and the INT8/FP16 tests also assert the cosine of the *input-dependent*
part of the outputs (each output minus its mean over the samples).
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from mconv.errors import EXIT_CONVERSION, EXIT_USAGE, InputError, UsageError
from mconv.metrics import compare_outputs, default_tolerance
from mconv.targets import BuildOptions, get_target
from mconv.targets.base import Artifact
from tests.models import custom_op_model

pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")

from mconv.targets.openvino import (  # noqa: E402
    OpenVinoRunner,
    OpenVinoTarget,
    canonicalize_names,
    int8_warnings,
)

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
THREADS = 2

# ---------------------------------------------------------------------------
# Test models


def reseed_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace float initializers with seeded random ones of the same shape.

    Weights of rank >= 2 get a fan-in scaled normal (LeCun: keeps activations in
    range through deep stacks); vectors (biases) get small values.
    """
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT:
            continue
        shape = tuple(t.dims)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            arr = rng.standard_normal(shape) * np.sqrt(1.5 / fan_in)
        else:
            arr = rng.standard_normal(shape) * 0.05
        t.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), t.name))
    return model


@functools.cache
def _light_bytes(name: str) -> bytes:
    path = LIGHT / f"light_{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not shipped with this onnx version")
    onnxsim = pytest.importorskip("onnxsim")
    model, ok = onnxsim.simplify(onnx.load(path))
    assert ok
    # No op may still build weights at run time: they must be initializers now.
    assert not [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    model = reseed_weights(model)
    graph = model.graph
    for node in graph.node:
        if node.op_type == "Softmax" and node.output[0] == graph.output[0].name:
            node.op_type = "Identity"
            del node.attribute[:]
    classifier = [n for n in graph.node if n.op_type in ("Conv", "Gemm")][-1]
    weights = next(t for t in graph.initializer if t.name == classifier.input[1])
    w = numpy_helper.to_array(weights)
    w = w - w.mean(axis=tuple(range(1, w.ndim)), keepdims=True)
    weights.CopyFrom(numpy_helper.from_array(w.astype(np.float32), weights.name))
    return model.SerializeToString()


def light_model(name: str) -> onnx.ModelProto:
    """A folded, re-seeded light model (a fresh copy each call)."""
    return onnx.load_from_string(_light_bytes(name))


@functools.cache
def _torch_cnn_bytes() -> bytes:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)

    class SmallNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1, groups=16),
                nn.BatchNorm2d(16),
                nn.Hardswish(),
                nn.Conv2d(16, 32, 1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.body(x))

    net = SmallNet().eval()
    # Non-trivial BatchNorm statistics.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 32, 32),),
            buf,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def torch_cnn() -> onnx.ModelProto:
    return onnx.load_from_string(_torch_cnn_bytes())


# ---------------------------------------------------------------------------
# Helpers


def image_feeds(
    model: onnx.ModelProto, count: int, seed: int, shape: tuple[int, ...] | None = None
) -> list[dict[str, np.ndarray]]:
    """Smooth pseudo-images (a gradient, a blob and noise) for a single NCHW input."""
    (inp,) = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if shape is None:
        dims = inp.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = []
    for _ in range(count):
        img = np.empty(shape, np.float32)
        for b in range(n):
            for ch in range(c):
                a, bb, cx, cy = rng.uniform(-1, 1, 4)
                blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * 4)
                img[b, ch] = a * xx + bb * yy + 1.5 * blob + 0.2 * rng.standard_normal((h, w))
        out.append({inp.name: img})
    return out


def ort_run(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[dict]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, f), strict=True)) for f in feeds]


def build(model, tmp_path: Path, precision="fp32", calib=None, stem="model", **values) -> Artifact:
    """``values``: the target's options, or the build-wide ``input_shapes``, ``batch``,
    ``calib_count_requested``."""
    common = {k: values.pop(k) for k in ("input_shapes", "batch", "calib_count_requested") if k in values}
    target = OpenVinoTarget().make_options(values, precision=precision)
    options = BuildOptions(precision=precision, calib=calib, target=target, **common)
    return get_target("openvino").write(model, tmp_path, stem, options)


def check(model, artifact: Artifact, feeds, precision: str, min_centred_cos: float | None = None):
    """Run ``artifact`` and onnxruntime on ``feeds``; assert the precision's tolerance and,
    if given, a bound on the cosine of the outputs' input-dependent part."""
    refs = ort_run(model, feeds)
    runner = get_target("openvino").runner(artifact, threads=THREADS)
    gots = [runner.infer(f) for f in feeds]
    comp = compare_outputs(refs, gots, default_tolerance(precision))
    assert comp.passed, comp.summary()
    if min_centred_cos is not None:
        for name in refs[0]:
            cos = centred_cosine([r[name] for r in refs], [g[name] for g in gots])
            assert cos >= min_centred_cos, f"{name}: centred cosine {cos:.5f}"
    return comp


def centred_cosine(refs: list[np.ndarray], gots: list[np.ndarray]) -> float:
    r = np.stack([x.ravel() for x in refs]).astype(np.float64)
    g = np.stack([x.ravel() for x in gots]).astype(np.float64)
    r -= r.mean(axis=0)
    g -= g.mean(axis=0)
    return float((r * g).sum() / (np.linalg.norm(r) * np.linalg.norm(g)))


def digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def layer_types(xml: Path) -> list[str]:
    import xml.etree.ElementTree as ET

    return [layer.get("type") for layer in ET.parse(xml).getroot().iter("layer")]


# ---------------------------------------------------------------------------
# Target basics


def test_registry_resolves_name_and_alias():
    assert isinstance(get_target("openvino"), OpenVinoTarget)
    assert isinstance(get_target("ov"), OpenVinoTarget)
    assert OpenVinoTarget.aliases == ()
    assert OpenVinoTarget.extra == "openvino"
    assert get_target("ov").runtime_missing() is None


def test_import_mconv_targets_does_not_import_openvino():
    code = (
        "import sys, mconv, mconv.targets; from mconv.targets import get_target; "
        "get_target('openvino'); print('openvino' in sys.modules, 'nncf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------
# FP32 / FP16 on real graphs


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "resnet50"])
def test_fp32_ir_matches_onnxruntime(name, tmp_path):
    model = light_model(name)
    art = build(model, tmp_path)
    assert art.main == tmp_path / "model.xml"
    assert art.files == [tmp_path / "model.xml", tmp_path / "model.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    assert art.precision == "fp32"
    # No silent FP16 compression: weights are stored as f32.
    text = art.main.read_text()
    assert 'element_type="f16"' not in text
    n_weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert (tmp_path / "model.bin").stat().st_size >= 4 * n_weights * 0.95
    assert art.meta["output_names"] == [o.name for o in model.graph.output]
    comp = check(model, art, image_feeds(model, 2, seed=1), "fp32")
    (out,) = comp.outputs
    assert out.rel <= 1e-4
    if out.top1 is not None:
        assert out.top1 == 1.0


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_fp16_ir_compresses_weights_and_matches(name, tmp_path):
    model = light_model(name)
    fp32 = build(model, tmp_path / "fp32")
    fp16 = build(model, tmp_path / "fp16", precision="fp16")
    assert fp16.precision == "fp16"
    assert 'element_type="f16"' in fp16.main.read_text()
    size32 = (tmp_path / "fp32" / "model.bin").stat().st_size
    size16 = (tmp_path / "fp16" / "model.bin").stat().st_size
    assert size16 < 0.55 * size32
    comp = check(model, fp16, image_feeds(model, 3, seed=2), "fp16", min_centred_cos=0.9999)
    assert comp.outputs[0].cosine >= 0.9999
    assert OpenVinoTarget.recognise(fp16.main).precision == "fp16"
    assert OpenVinoTarget.recognise(fp32.main).precision == "fp32"


# ---------------------------------------------------------------------------
# INT8 with NNCF


def _has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# OpenVINO 2026.4's CPU plugin computes this INT8 IR wrongly with its AMX kernels (softmax
# output max 1671, cos 0.13); the same IR is right with ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI
# or AVX2. mconv's build refuses it there (verification), which is what a user needs.
_AMX_MISCOMPUTES = pytest.mark.skipif(
    _has_amx(), reason="OpenVINO's AMX INT8 kernels miscompute the light shufflenet IR on this CPU"
)


@pytest.mark.parametrize("name", ["squeezenet", pytest.param("shufflenet", marks=_AMX_MISCOMPUTES)])
def test_int8_ir_quantizes_and_stays_close(name, tmp_path):
    model = light_model(name)
    calib = image_feeds(model, 12, seed=10)
    art = build(model, tmp_path, precision="int8", calib=calib, calib_count_requested=300)
    assert art.precision == "int8"
    assert layer_types(art.main).count("FakeQuantize") >= 5
    assert art.meta["int8"] == {"calib_samples": 12, "model_type": "default", "preset": "performance", "ignore": []}
    # Held-out samples, not the calibration ones.
    comp = check(model, art, image_feeds(model, 6, seed=99), "int8", min_centred_cos=0.95)
    out = comp.outputs[0]
    assert out.cosine >= 0.99
    assert out.top1 is not None or out.shape[1] == 1000  # class scores (N,1000[,1,1])
    warnings = art.meta["warnings"]
    assert any("--calib-count 300" in w and "only 12" in w for w in warnings)
    assert any("fewer than 100" in w for w in warnings)
    assert OpenVinoTarget.recognise(art.main).precision == "int8"


@_AMX_MISCOMPUTES
def test_int8_top1_on_classifier_scores(tmp_path):
    model = light_model("shufflenet")  # output (N, 1000): top-1 is reported
    art = build(model, tmp_path, precision="int8", calib=image_feeds(model, 12, seed=3))
    feeds = image_feeds(model, 8, seed=4)
    refs = ort_run(model, feeds)
    assert len({int(r["gpu_0/softmax_1"].argmax()) for r in refs}) >= 2  # not one class for all
    comp = check(model, art, feeds, "int8", min_centred_cos=0.95)
    out = comp.outputs[0]
    assert out.top1 is not None and out.top5 is not None
    assert out.top1 >= 0.75


def test_int8_mixed_preset_and_ignore_by_onnx_op_type(tmp_path):
    model = light_model("squeezenet")
    calib = image_feeds(model, 8, seed=5)
    base = build(model, tmp_path / "base", precision="int8", calib=calib)
    mixed = build(model, tmp_path / "mixed", precision="int8", calib=calib, int8_preset="mixed")
    assert mixed.meta["int8"]["preset"] == "mixed"
    assert digest(mixed.files) != digest(base.files)
    check(model, mixed, image_feeds(model, 2, seed=6), "int8")

    # Keep the first conv (by ONNX node name) and every Concat input in float.
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    kept = build(model, tmp_path / "kept", precision="int8", calib=calib, ignore=[first_conv, "Concat"])
    n_base = layer_types(base.main).count("FakeQuantize")
    n_kept = layer_types(kept.main).count("FakeQuantize")
    assert n_kept < n_base
    check(model, kept, image_feeds(model, 2, seed=6), "int8")


def test_ignore_unknown_entry_is_usage_error(tmp_path):
    model = light_model("squeezenet")
    with pytest.raises(UsageError, match="--ignore 'NoSuchLayer'") as ei:
        build(model, tmp_path / "o", precision="int8", calib=image_feeds(model, 2, 0), ignore=["NoSuchLayer"])
    assert ei.value.exit_code == EXIT_USAGE
    assert "Conv" in str(ei.value)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_int8_transformer_gets_nncf_transformer_mode_and_passes(tmp_path):
    """A ViT-like graph (MatMul -> Softmax -> MatMul attention) is quantized in NNCF's
    transformer mode without being asked, and its INT8 IR keeps cosine >= 0.99."""
    from mconv.graphinfo import attention_blocks
    from tests.torch_models import tiny_vit_onnx

    model = tiny_vit_onnx(depth=6, dim=96)
    assert attention_blocks(model) == 6
    art = build(model, tmp_path, precision="int8", calib=image_feeds(model, 16, seed=10))
    assert art.meta["int8"]["model_type"] == "transformer" and art.meta["int8"]["preset"] == "mixed"
    # Held-out samples; the input-dependent part must agree too (NNCF's defaults give ~0.987 here).
    check(model, art, image_feeds(model, 6, seed=99), "int8", min_centred_cos=0.99)


def test_int8_model_type_can_be_forced(tmp_path):
    from tests.torch_models import tiny_vit_onnx

    model = tiny_vit_onnx(depth=1)
    art = build(model, tmp_path, precision="int8", calib=image_feeds(model, 2, seed=1), int8_model_type="default")
    assert art.meta["int8"]["model_type"] == "default" and art.meta["int8"]["preset"] == "performance"


def test_int8_needs_calibration_and_known_preset(tmp_path):
    model = light_model("squeezenet")
    with pytest.raises(UsageError, match="--calib DATA"):
        build(model, tmp_path, precision="int8")
    with pytest.raises(UsageError, match="--int8-preset 'fast'"):
        build(model, tmp_path, precision="int8", calib=image_feeds(model, 1, 0), int8_preset="fast")
    with pytest.raises(UsageError, match="int8_model_type 'cnn'"):
        build(model, tmp_path, precision="int8", calib=image_feeds(model, 1, 0), int8_model_type="cnn")
    assert not list(tmp_path.iterdir())


def test_int8_warnings_helper():
    calib = [{"x": np.zeros((1, 2), np.float32)}] * 150
    opts = BuildOptions("int8", calib=calib, calib_count_requested=300)
    (w,) = int8_warnings(opts)
    assert "300" in w and "150" in w
    opts = BuildOptions("int8", calib=calib, calib_count_requested=150)
    assert int8_warnings(opts) == []
    assert int8_warnings(BuildOptions("fp32")) == []
    target = get_target("openvino")
    assert target.preflight(onnx.ModelProto(), opts) == []


# ---------------------------------------------------------------------------
# Torch-exported model, dynamic and static shapes


def test_torch_model_keeps_dynamic_batch(tmp_path):
    model = torch_cnn()
    art = build(model, tmp_path)
    (inp,) = art.meta["inputs"]
    assert inp["name"] == "image"
    assert inp["shape"] == [None, 3, 32, 32]
    assert art.meta["dynamic"] is True
    assert art.meta["output_names"] == ["logits"]
    runner = get_target("openvino").runner(art, threads=THREADS)
    assert runner.input_names() == ["image"] and runner.output_names() == ["logits"]
    for batch in (1, 3):
        check(model, art, image_feeds(model, 2, seed=batch, shape=(batch, 3, 32, 32)), "fp32")


def test_torch_model_fp16_and_int8(tmp_path):
    model = torch_cnn()
    fp16 = build(model, tmp_path / "fp16", precision="fp16")
    check(model, fp16, image_feeds(model, 3, seed=7), "fp16")
    int8 = build(model, tmp_path / "int8", precision="int8", calib=image_feeds(model, 16, seed=8))
    comp = check(model, int8, image_feeds(model, 6, seed=9), "int8", min_centred_cos=0.95)
    out = comp.outputs[0]
    assert out.cosine >= 0.99 and out.top1 is not None


def test_input_shape_and_batch_fix_dims(tmp_path):
    model = torch_cnn()
    fixed = build(model, tmp_path / "fixed", input_shapes={"image": (2, 3, 32, 32)})
    assert fixed.meta["inputs"][0]["shape"] == [2, 3, 32, 32]
    assert fixed.meta["dynamic"] is False
    check(model, fixed, image_feeds(model, 1, seed=1, shape=(2, 3, 32, 32)), "fp32")
    runner = get_target("openvino").runner(fixed)
    with pytest.raises(InputError, match="inference failed"):
        runner.infer(image_feeds(model, 1, seed=1, shape=(3, 3, 32, 32))[0])

    batched = build(model, tmp_path / "batch", batch=4)
    assert batched.meta["inputs"][0]["shape"] == [4, 3, 32, 32]
    check(model, batched, image_feeds(model, 1, seed=2, shape=(4, 3, 32, 32)), "fp32")

    # INT8 at --batch 4 with batch-1 calibration samples (repeated along the batch).
    q = build(model, tmp_path / "q", precision="int8", calib=image_feeds(model, 8, 3), batch=4)
    assert q.meta["inputs"][0]["shape"] == [4, 3, 32, 32]
    check(model, q, image_feeds(model, 2, seed=4, shape=(4, 3, 32, 32)), "int8")


def test_bad_input_specs_are_usage_errors(tmp_path):
    model = torch_cnn()
    with pytest.raises(UsageError, match=r"no input of that name.*'image'"):
        build(model, tmp_path, input_shapes={"img": (1, 3, 32, 32)})
    with pytest.raises(UsageError, match="rank 4"):
        build(model, tmp_path, input_shapes={"image": (1, 3, 32)})
    with pytest.raises(UsageError, match="--batch 0"):
        build(model, tmp_path, batch=0)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_writing_is_byte_identical(precision, tmp_path):
    model = light_model("squeezenet")
    calib = image_feeds(model, 4, seed=11) if precision == "int8" else None
    a = build(model, tmp_path / "a", precision=precision, calib=calib)
    b = build(model, tmp_path / "b", precision=precision, calib=calib)
    assert digest(a.files) == digest(b.files)
    # Counter-made names are renumbered from 0, not left as e.g. Constant_161282.
    import xml.etree.ElementTree as ET

    layers = [layer.get("name") for layer in ET.parse(a.main).getroot().iter("layer")]
    numbers = [int(m.group(1)) for n in layers for m in re.finditer(r"[A-Z]\w*?_(\d+)", n)]
    assert numbers and max(numbers) < 2 * len(layers)


def test_canonicalize_names_keeps_onnx_names():
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 2], np.float32, name="Relu_7")  # an ONNX-given name
    y = ops.relu(x)
    y.set_friendly_name("Relu_123456")
    z = ops.add(y, ops.constant(np.ones((1, 2), np.float32)))
    z.set_friendly_name("Relu_123456/fq_weights_1")
    model = ov.Model([z], [x])
    canonicalize_names(model, keep={"Relu_7"})
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    assert names[0] == "Relu_7"
    assert "Relu_0" in names and "Relu_0/fq_weights_1" in names
    assert not [n for n in names if "123456" in n]


# ---------------------------------------------------------------------------
# Errors and recognising files


def test_unsupported_op_names_type_and_node_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception) as ei:
        build(custom_op_model(), out)
    err = ei.value
    assert getattr(err, "exit_code", None) == EXIT_CONVERSION
    msg = str(err)
    assert "com.example::FancyOp" in msg and "fancy_node" in msg
    assert "relu_in" not in msg
    assert not out.exists() or not list(out.iterdir())
    assert isinstance(err.__cause__, Exception)  # chained from the frontend's error


def test_recognise_ir_and_missing_bin(tmp_path):
    model = light_model("squeezenet")
    art = build(model, tmp_path, stem="sq")
    found = OpenVinoTarget.recognise(art.main)
    assert found is not None
    assert (found.target, found.main, found.files) == ("openvino", art.main, art.files)
    # A recognised IR runs without the writer's meta.
    runner = OpenVinoRunner(found, threads=THREADS)
    feeds = image_feeds(model, 1, seed=0)
    assert runner.output_names() == [model.graph.output[0].name]
    assert runner.infer(feeds[0])[model.graph.output[0].name].shape == (1, 1000, 1, 1)

    (tmp_path / "other.xml").write_text("<?xml version='1.0'?><config><a/></config>")
    assert OpenVinoTarget.recognise(tmp_path / "other.xml") is None
    assert OpenVinoTarget.recognise(tmp_path / "sq.bin") is None

    (tmp_path / "sq.bin").unlink()
    with pytest.raises(InputError, match=r"sq\.xml.*sq\.bin") as ei:
        OpenVinoTarget.recognise(art.main)
    assert ei.value.exit_code == EXIT_USAGE
