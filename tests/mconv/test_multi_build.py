"""``mconv build MODEL --target a,b,c``: one export and pass pipeline, each target into
``-o DIR/<target>/``, one verification table, the worst exit code; a failed target does
not stop the others."""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

import mconv
from mconv.pipeline import split_target_options
from mconv.targets import get_target
from tests.conftest import assert_clean_error
from tests.models import conv_bn_relu_model


def _hardmax_model() -> onnx.ModelProto:
    """Relu -> Hardmax: onnxruntime and OpenVINO run it, the ncnn writer has no Hardmax."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["y"], axis=-1)],
        "hardmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_three_targets_one_table_each_artifact_verified(tmp_path, mconv_proc):
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_model(), str(src))
    r = mconv_proc("build", src, "-t", "onnx,ncnn,openvino", "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    report = r.json
    assert [t["target"] for t in report["targets"]] == ["onnx", "ncnn", "openvino"]
    assert all(t["status"] == "ok" and t["verification"]["passed"] for t in report["targets"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ncnn", "onnx", "openvino"]
    mains = [tmp_path / "out" / "onnx" / "m.onnx", tmp_path / "out" / "ncnn" / "m.param"]
    mains.append(tmp_path / "out" / "openvino" / "m.xml")
    # each artifact checked again, by `mconv verify` against onnxruntime on the source
    checked = mconv.verify(src, mains)
    assert checked.passed and len(checked.results) == 3
    # the table: one verification table, a row per target
    r = mconv_proc("build", src, "-t", "onnx,ncnn", "-o", tmp_path / "out2")
    assert r.code == 0, r.err
    assert r.out.count("verification vs onnxruntime") == 1
    assert "built onnx" in r.out and "built ncnn" in r.out


def test_a_failing_target_gives_its_exit_code_and_the_others_are_written(tmp_path, mconv_proc):
    src = tmp_path / "hm.onnx"
    onnx.save(_hardmax_model(), str(src))
    r = mconv_proc("build", src, "-t", "onnx,ncnn,openvino", "-o", tmp_path / "out")
    assert_clean_error(r, 1, "1 of 3 target(s) failed", "ncnn", "Hardmax")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["onnx", "openvino"]
    assert (tmp_path / "out" / "openvino" / "hm.xml").is_file()
    result = mconv.build(src, ["onnx", "ncnn"], tmp_path / "api")
    assert result.exit_code == 1 and [f.target for f in result.failures] == ["ncnn"]
    assert [b.target for b in result.results] == ["onnx"] and result.results[0].verification.passed
    assert json.loads(json.dumps(result.to_json()))["targets"][1]["status"] == "failed"


def test_options_go_to_the_targets_that_declare_them(tmp_path, mconv_proc):
    onnx_t, openvino_t = get_target("onnx"), get_target("openvino")
    per = split_target_options([onnx_t, openvino_t], {"calib_method": "minmax"})
    assert per == {"onnx": {"calib_method": "minmax"}, "openvino": {}}
    src = tmp_path / "m.onnx"
    onnx.save(conv_bn_relu_model(), str(src))
    r = mconv_proc("build", src, "-t", "onnx,ncnn", "--option", "workspace=1", "-o", tmp_path / "out")
    assert_clean_error(r, 2, "--option workspace", "none of the targets onnx, ncnn declares it", "trt")
    assert not (tmp_path / "out").exists()
    r = mconv_proc("build", src, "-t", "onnx,onnx", "-o", tmp_path / "out")
    assert_clean_error(r, 2, "give each target once")
