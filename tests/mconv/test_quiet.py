"""stderr carries only mconv's own lines: onnxruntime's C++ logger, onnxsim's warnings and
tracebacks stay out of it unless --verbose asks for them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def noisy_model() -> onnx.ModelProto:
    """A constant Reshape onnxruntime cannot run: folding it (onnxsim evaluates constant
    nodes in onnxruntime) makes onnxruntime log errors and onnxsim print a traceback."""
    inits = [
        numpy_helper.from_array(np.ones((2, 3), np.float32), "c"),
        numpy_helper.from_array(np.array([4], np.int64), "shp"),
    ]
    nodes = [
        helper.make_node("Reshape", ["c", "shp"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "noisy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_optimize_keeps_third_party_logs_off_stderr(tmp_path, mconv_proc):
    src = tmp_path / "noisy.onnx"
    onnx.save(noisy_model(), str(src))
    r = mconv_proc("optimize", src, "-o", tmp_path / "a.onnx", cwd=tmp_path)
    assert r.code == 0
    assert r.err == ""
    r = mconv_proc("optimize", src, "-o", tmp_path / "b.onnx", "--verbose", cwd=tmp_path)
    assert r.code == 0
    assert "onnxruntime" in r.err  # the same run, shown on request


def test_build_reports_the_runtime_failure_in_one_line(tmp_path, mconv_proc):
    src = tmp_path / "noisy.onnx"
    onnx.save(noisy_model(), str(src))
    r = mconv_proc("build", src, "-t", "onnx", "-o", tmp_path / "out", cwd=tmp_path)
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mconv: error: onnxruntime"), r.err
    assert "[E:onnxruntime" not in r.err and "Traceback" not in r.err
    assert not (tmp_path / "out").exists()


def test_folding_log_of_zero_prints_no_numpy_warning(tmp_path, mconv_proc):
    # T5's relative-position buckets: log(0) = -inf, cast to int64, then discarded by Where.
    rel = numpy_helper.from_array(np.array([0.0, 1.0, 2.0, 9.0], np.float32), "rel")
    four = numpy_helper.from_array(np.array(4.0, np.float32), "four")
    nodes = [
        helper.make_node("Log", ["rel"], ["lg"]),
        helper.make_node("Cast", ["lg"], ["big"], to=TensorProto.INT64),
        helper.make_node("Cast", ["rel"], ["small"], to=TensorProto.INT64),
        helper.make_node("Less", ["rel", "four"], ["is_small"]),
        helper.make_node("Where", ["is_small", "small", "big"], ["bucket"]),
        helper.make_node("Cast", ["bucket"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "bf"], ["y"]),
    ]
    g = helper.make_graph(nodes, "t5_buckets", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [rel, four])  # fmt: skip
    src = tmp_path / "buckets.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    r = mconv_proc("build", src, "-t", "ncnn", "-o", tmp_path / "out", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "Warning" not in r.err, r.err
