"""The CLI contract: exit codes, one-line errors, --json, listing commands, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from tests.conftest import assert_clean_error
from tests.models import conv_bn_relu_model


@pytest.fixture
def small_onnx(tmp_path):
    p = tmp_path / "small.onnx"
    onnx.save(conv_bn_relu_model(), str(p))
    return p


def test_help_does_not_import_heavy_frameworks():
    code = (
        "import sys, mconv, mconv.cli\n"
        "from mconv.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "names = ('torch', 'openvino', 'ncnn', 'tensorrt', 'nncf', 'onnxruntime', 'ray', 'tvm')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(heavy)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_targets_lists_builtins(cli):
    r = cli("targets", "--json")
    assert r.code == 0
    names = {t["name"] for t in r.json["targets"]}
    assert {"onnx", "ncnn", "openvino", "trt"} <= names


def test_passes_lists_default_pipeline(cli):
    r = cli("passes", "--json")
    assert r.code == 0
    assert "fold_constants" in r.json["passes"]
    assert r.json["default_pipeline"][0] == "infer_shapes"


def test_build_onnx_json_lists_artifacts_and_nothing_else(cli, small_onnx, in_tmp):
    r = cli("build", small_onnx, "--target", "onnx", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)  # the whole stdout is one JSON object
    assert report["artifacts"] == [str(in_tmp / "small_onnx" / "small.onnx")]
    assert report["verification"]["passed"] is True
    assert (in_tmp / "small_onnx" / "small.onnx").is_file()


def test_default_output_paths_follow_the_input_name(cli, small_onnx, in_tmp):
    assert cli("optimize", small_onnx).code == 0
    assert (in_tmp / "small.opt.onnx").is_file()
    assert cli("build", small_onnx, "-t", "onnx").code == 0
    assert sorted(p.name for p in (in_tmp / "small_onnx").iterdir()) == ["small.onnx"]


def test_missing_file(cli, in_tmp):
    r = cli("build", "nope.onnx", "--target", "onnx")
    assert_clean_error(r, 2, "nope.onnx", "no such file")
    assert not any(in_tmp.iterdir())


def test_random_bytes_onnx(cli, in_tmp):
    bad = in_tmp / "bad.onnx"
    bad.write_bytes(bytes(range(7, 250)) * 3)
    for cmd in (("optimize", bad), ("build", bad, "-t", "onnx"), ("inspect", bad)):
        r = cli(*cmd)
        assert_clean_error(r, 2, "bad.onnx")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["bad.onnx"]


def test_truncated_onnx(cli, small_onnx, in_tmp):
    data = small_onnx.read_bytes()
    t = in_tmp / "trunc.onnx"
    t.write_bytes(data[: len(data) // 2])
    r = cli("build", t, "-t", "onnx", "-o", in_tmp / "out")
    assert_clean_error(r, 2, "trunc.onnx")
    assert not (in_tmp / "out").exists()


def test_full_disk_is_one_line_and_leaves_nothing(cli, small_onnx, in_tmp, monkeypatch):
    """A full disk while writing the artifact: exit 1, one line saying what to do, the
    staging folder and partial files removed, no output folder."""
    import errno
    import os

    import mconv.modelio

    def disk_full(tmp, dest):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write() raises it

    monkeypatch.setattr(mconv.modelio, "commit", disk_full)
    r = cli("build", small_onnx, "-t", "onnx", "-o", in_tmp / "out")
    assert_clean_error(r, 1, "no space left on the device", "-o", "nothing was written")
    assert "internal error" not in r.err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["small.onnx"]


def test_empty_file(cli, in_tmp):
    (in_tmp / "empty.onnx").write_bytes(b"")
    assert_clean_error(cli("optimize", in_tmp / "empty.onnx"), 2, "empty")


def test_malformed_input_spec(cli, small_onnx):
    assert_clean_error(cli("build", small_onnx, "-t", "onnx", "--input", "x:1xAx3"), 2, "--input", "1x3x224x224")
    assert_clean_error(cli("build", small_onnx, "-t", "onnx", "--input", "x"), 2, "NAME:SHAPE")


def test_unknown_target_and_pass(cli, small_onnx):
    assert_clean_error(cli("build", small_onnx, "--target", "coreml"), 2, "--target 'coreml'", "mconv targets")
    assert_clean_error(cli("optimize", small_onnx, "--passes", "infer_shapes,frobnicate"), 2, "frobnicate")


def test_usage_errors_from_option_parsing(cli, small_onnx):
    assert_clean_error(cli("build", small_onnx), 2, "--target")
    assert_clean_error(cli("build", small_onnx, "-t", "onnx", "--no-such-flag"), 2, "--no-such-flag")
    assert_clean_error(cli("build", small_onnx, "-t", "onnx", "--fp16", "--int8"), 2, "exclusive")
    assert_clean_error(cli("build", small_onnx, "-t", "onnx", "--int8"), 2, "--calib")


def test_json_error_object(cli, in_tmp):
    r = cli("optimize", "missing.onnx", "--json")
    assert r.code == 2
    obj = json.loads(r.out)
    assert obj["ok"] is False and obj["exit_code"] == 2 and "missing.onnx" in obj["error"]


def test_no_traceback_in_a_real_process_and_debug_shows_it(mconv_proc, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x01\x02garbage")
    r = mconv_proc("optimize", bad)
    assert_clean_error(r, 2, "bad.onnx")
    r = mconv_proc("--debug", "optimize", bad)
    assert r.code == 2 and "Traceback" in r.err


def test_inspect_reports_ops_params_and_targets(cli, small_onnx):
    r = cli("inspect", small_onnx, "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["ops"] == {"BatchNormalization": 1, "Conv": 1, "Relu": 1}
    assert rep["inputs"] == [{"name": "x", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert rep["parameters"] == 4 * 3 * 3 * 3 + 4 * 5
    assert rep["targets"]["onnx"]["unsupported"] == {}


def test_inspect_lists_ops_a_target_cannot_lower(cli, tmp_path):
    from onnx import TensorProto, helper

    from tests.models import make_graph_model

    m = make_graph_model(
        [helper.make_node("FancyOp", ["x"], ["y"], name="fancy_1", domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    p = tmp_path / "fancy.onnx"
    onnx.save(m, str(p))
    r = cli("inspect", p, "--json", "--target", "openvino")
    assert r.code == 0, r.err
    assert "fancy_1" in json.dumps(r.json["targets"])


def test_inspect_trt_lists_preflight_findings_without_tensorrt(cli):
    from tests.models import light_model

    r = cli("inspect", light_model("shufflenet"), "--target", "trt", "--json")
    assert r.code == 0, r.err
    trt = r.json["targets"]["trt"]
    assert "tensorrt" in trt["runtime"]  # not installed here, said so
    assert any("INT64" in f["message"] for f in trt["findings"])


def test_build_trt_without_tensorrt_names_the_extra(cli, small_onnx, in_tmp):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    r = cli("build", small_onnx, "-t", "trt", "-o", in_tmp / "out")
    assert_clean_error(r, 1, "pip install 'mconv[tensorrt]'")
    assert not (in_tmp / "out").exists()


def test_build_of_a_qdq_model_for_ncnn_says_to_start_from_the_float_model(cli, tmp_path, in_tmp):
    # Q/DQ on activations (a model quantized already) is refused before anything is written,
    # with the way to get an INT8 ncnn model: the float model with --int8 --calib.
    from tests.models import qdq_conv_bn_relu_model

    q = qdq_conv_bn_relu_model()
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    p = tmp_path / "q.onnx"
    onnx.save(q, str(p))
    r = cli("build", p, "-t", "ncnn", "-o", in_tmp / "out")
    assert_clean_error(r, 1, "QuantizeLinear", "quantized already", "--int8 --calib")
    assert not (in_tmp / "out").exists()


def test_inspect_an_artifact_shows_its_target_io_and_ncnn_layers(cli, small_onnx, in_tmp):
    r = cli("build", small_onnx, "-t", "ncnn,openvino", "-o", in_tmp / "out")
    assert r.code == 0, r.err
    model = onnx.load(str(small_onnx))
    want_in = [i.name for i in model.graph.input]
    want_out = [o.name for o in model.graph.output]
    param = in_tmp / "out" / "ncnn" / "small.param"
    r = cli("inspect", param, "--json")
    assert r.code == 0, r.err
    assert r.json["target"] == "ncnn" and r.json["precision"] == "fp32"
    assert [i["name"] for i in r.json["inputs"]] == want_in
    assert [o["name"] for o in r.json["outputs"]] == want_out
    assert r.json["layers"]["Convolution"] >= 1 and r.json["layers"]["Input"] == 1
    assert {f["path"].rsplit(".", 1)[-1] for f in r.json["files"]} >= {"param", "bin"}
    xml = in_tmp / "out" / "openvino" / "small.xml"
    r = cli("inspect", xml, "--json")
    assert r.code == 0, r.err
    assert r.json["target"] == "openvino" and [i["name"] for i in r.json["inputs"]] == want_in
    r = cli("inspect", param)
    assert r.code == 0 and "ncnn artifact (fp32)" in r.out and "Convolution" in r.out
    # --target is for models; an artifact's files must all be there.
    assert_clean_error(cli("inspect", param, "--target", "openvino"), 2, "artifact of target 'ncnn'")
    (in_tmp / "out" / "ncnn" / "small.bin").unlink()
    assert_clean_error(cli("inspect", param), 2, "small.bin")


def test_a_build_leaves_nothing_in_the_users_home(small_onnx, tmp_path):
    # onnxruntime writes a telemetry device id and event store under ~/.cache/Microsoft when
    # imported unless ORT_DISABLE_TELEMETRY is set; OpenVINO writes a Google Analytics client
    # id under ~/intel unless openvino_telemetry is missing. mconv stops both.
    import os

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    for target in ("onnx", "ncnn", "openvino"):
        p = subprocess.run(
            [sys.executable, "-m", "mconv", "build", str(small_onnx), "-t", target, "-o", str(tmp_path / target)],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
    assert sorted(str(f.relative_to(home)) for f in home.rglob("*")) == []
