"""NcnnTarget behaviour: precisions, refusals, determinism, recognition, meta."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mconv.errors import ConversionError, InputError, UnsupportedOpsError
from mconv.targets import get_target
from mconv.targets.base import BuildOptions
from mconv.targets.ncnn import NcnnTarget
from mconv.targets.ncnn.ir import TAG_FP16, TAG_INT8

H = helper.make_node


def _cnn(make_model, rng, batch=1):
    def w(*s):
        return (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)

    return make_model(
        [H("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), H("Relu", ["c1"], ["r1"]),
         H("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16),
         H("Relu", ["c2"], ["r2"]), H("GlobalAveragePool", ["r2"], ["p"]),
         H("Flatten", ["p"], ["f"]), H("Gemm", ["f", "w3", "b3"], ["y"], transB=1)],
        {"x": (batch, 3, 16, 16)}, ["y"],
        {"w1": w(16, 3, 3, 3), "b1": w(16, 1)[:, 0], "w2": w(16, 1, 3, 3),
         "b2": w(16, 1)[:, 0], "w3": w(10, 16), "b3": w(10, 1)[:, 0]},
    )  # fmt: skip


def test_registry_and_supported_ops():
    t = get_target("ncnn")
    assert isinstance(t, NcnnTarget) and t.isolate
    ops = t.supported_ops()
    for op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "Resize", "Softmax"):
        assert op in ops


def test_import_mconv_does_not_import_ncnn():
    import subprocess
    import sys

    code = "import mconv, mconv.targets.ncnn, sys; print('ncnn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fp16_weights_tagged_and_close(check, make_model, rng):
    m = _cnn(make_model, rng)
    comp = check(m, precision="fp16")
    assert comp.outputs[0].cosine >= 0.9999
    data = check.artifact.main.with_suffix(".bin").read_bytes()
    assert int.from_bytes(data[:4], "little") == TAG_FP16


@pytest.mark.parametrize("method", ["kl", "minmax"])
def test_int8_calibrated(check, make_model, rng, method):
    m = _cnn(make_model, rng)
    calib = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    comp = check(m, precision="int8", calib=calib, options={"calib_method": method})
    assert comp.outputs[0].cosine >= 0.99
    art = check.artifact
    table = art.main.with_suffix(".table").read_text().splitlines()
    assert any(line.split()[0].endswith("_param_0") and len(line.split()) == 17 for line in table)
    assert sum(1 for line in table if "_param_0" not in line) == 3  # 2 convs + InnerProduct
    assert " 8=2" in art.main.read_text() and " 8=1" in art.main.read_text()
    data = art.main.with_suffix(".bin").read_bytes()
    assert int.from_bytes(data[:4], "little") == TAG_INT8


def test_int8_without_calibration_is_a_usage_error(make_model, rng, tmp_path):
    with pytest.raises(Exception, match="--calib"):
        NcnnTarget().write(_cnn(make_model, rng), tmp_path, "m", BuildOptions(precision="int8"))


def test_unsupported_ops_collected_nothing_written(make_model, tmp_path):
    m = make_model(
        [H("Relu", ["x"], ["a"]), H("NonZero", ["a"], ["b"]), H("Cast", ["b"], ["c"], to=1),
         H("Det", ["x"], ["d"]), H("Hardmax", ["x"], ["y"])],
        {"x": (1, 4, 4)}, ["y", "c", "d"],
    )  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(UnsupportedOpsError) as ei:
        NcnnTarget().write(m, out, "m", BuildOptions())
    assert {"NonZero", "Det", "Hardmax"} <= set(ei.value.ops)
    assert "Nothing was written" in str(ei.value)
    assert not out.exists() or not any(out.iterdir())
    assert set(NcnnTarget().unsupported(m)) >= {"NonZero", "Det", "Hardmax"}


def test_batch_greater_than_one_refused_naming_node(make_model, rng, tmp_path):
    m = _cnn(make_model, rng, batch=4)
    m.graph.node[0].name = "stem_conv"
    with pytest.raises(ConversionError, match=r"stem_conv.*batch.*4"):
        NcnnTarget().preflight(m, BuildOptions())
    with pytest.raises(ConversionError):
        NcnnTarget().write(m, tmp_path / "o", "m", BuildOptions())
    assert not (tmp_path / "o" / "m.param").exists()


def test_dynamic_batch_merged_into_channels_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [4, 1, 3, 3])
    g = helper.make_graph([H("Reshape", ["x", "s"], ["y"], name="fold_batch")], "g", [x], [y], [shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError, match=r"fold_batch.*batch axis 0 .* merged"):
        NcnnTarget().preflight(m, BuildOptions())


def test_dynamic_batch_fixed_to_one_with_warning(check, make_model):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([H("Softmax", ["x"], ["y"], axis=-1)], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    warnings = NcnnTarget().preflight(m, BuildOptions())
    assert warnings and "fixed to 1" in warnings[0]
    check(m, {"x": np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32)})


def test_byte_identical_twice(make_model, rng, tmp_path):
    m = _cnn(make_model, rng)
    a = NcnnTarget().write(m, tmp_path / "a", "m", BuildOptions())
    b = NcnnTarget().write(m, tmp_path / "b", "m", BuildOptions())
    for fa, fb in zip(a.files, b.files):
        assert fa.read_bytes() == fb.read_bytes(), fa.name


def test_meta_maps_tensors_to_blobs(make_model, rng, tmp_path):
    m = _cnn(make_model, rng)
    art = NcnnTarget().write(m, tmp_path, "m", BuildOptions())
    text = art.main.read_text()
    assert art.meta["inputs"][0] == {"name": "x", "blob": "x", "shape": [1, 3, 16, 16],
                                     "dtype": "float32", "feed": "float"}  # fmt: skip
    assert art.meta["outputs"][0]["shape"] == [1, 10]
    blobs = art.meta["blobs"]
    assert blobs["x"] == "x" and blobs["y"] in text.split()
    assert blobs["c1"] is None  # fused into the convolution's activation
    assert blobs["r1"] in text.split()


def test_recognise_by_content(make_model, rng, tmp_path):
    m = _cnn(make_model, rng)
    art = NcnnTarget().write(m, tmp_path, "net", BuildOptions())
    odd = tmp_path / "renamed.txt"
    odd.write_bytes(art.main.read_bytes())
    assert NcnnTarget.recognise(tmp_path / "m.onnx") is None
    with pytest.raises(InputError, match=r"renamed\.bin"):
        NcnnTarget.recognise(odd)
    got = NcnnTarget.recognise(art.main)
    assert got is not None and got.meta["outputs"][0]["name"] == "y"
    onnx.save(m, tmp_path / "x.onnx")
    assert NcnnTarget.recognise(tmp_path / "x.onnx") is None


def test_runner_without_meta_uses_param_io(make_model, rng, tmp_path):
    m = _cnn(make_model, rng)
    art = NcnnTarget().write(m, tmp_path, "net", BuildOptions())
    (tmp_path / "net.mconv.json").unlink()
    bare = NcnnTarget.recognise(art.main)
    assert bare is not None and bare.meta == {}
    r = NcnnTarget().runner(bare)
    out = r.infer({"x": np.zeros((1, 3, 16, 16), np.float32)})
    assert list(out) == [art.meta["outputs"][0]["blob"]] and out[next(iter(out))].size == 10


def test_missing_inputs_message(make_model, rng, tmp_path: Path):
    art = NcnnTarget().write(_cnn(make_model, rng), tmp_path, "net", BuildOptions())
    with pytest.raises(InputError, match="inputs \\['x'\\] were not given"):
        NcnnTarget().runner(art).infer({})
