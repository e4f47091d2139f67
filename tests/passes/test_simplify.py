"""The simplify pass's route through onnxsim's C++ core (passes/simplify.py): the same
model as ``onnxsim.simplify``, and a build that never imports the onnxsim package,
onnxruntime or sympy when the core folds nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.models import conv_bn_relu_model, make_graph_model

ROOT = Path(__file__).resolve().parents[2]


def _folding_model() -> onnx.ModelProto:
    """y = x * (a + b) with a, b initializers: onnxsim folds the Add through its
    executor (onnxruntime), so the core calls back into Python."""
    a = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "a")
    b = numpy_helper.from_array(np.full((1, 4), 0.5, np.float32), "b")
    nodes = [helper.make_node("Add", ["a", "b"], ["s"], name="fold_me"), helper.make_node("Mul", ["x", "s"], ["y"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    return make_graph_model(nodes, vi[:1], vi[1:], [a, b])


def test_core_path_gives_onnxsims_model_when_it_folds(tmp_path):
    from mconv.passes.simplify import _import_onnxsim, _simplify_with_core

    model = _folding_model()
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    got = _simplify_with_core(model, str(path), str(tmp_path / "out.onnx"), 1 << 30)
    assert got is not None  # the core path was taken, not the fallback
    assert [n.op_type for n in got.graph.node] == ["Mul"]
    want, ok = _import_onnxsim().simplify(str(path), perform_optimization=True, tensor_size_threshold="1024MB")
    assert ok
    assert got.SerializeToString() == want.SerializeToString()


def test_core_path_gives_onnxsims_model_on_a_cnn(tmp_path):
    from mconv.passes.simplify import _import_onnxsim, _simplify_with_core

    model = conv_bn_relu_model()
    path = tmp_path / "in.onnx"
    onnx.save(model, path)
    got = _simplify_with_core(model, str(path), str(tmp_path / "out.onnx"), 1 << 30)
    want, _ = _import_onnxsim().simplify(model, perform_optimization=True, tensor_size_threshold="1024MB")
    assert got is not None
    assert got.SerializeToString() == want.SerializeToString()


BUILD_AND_LIST_MODULES = """
import json, sys
from mconv.cli import main
sys.argv = ["mconv", "build", sys.argv[1], "--target", "litert", "--no-verify", "-o", sys.argv[2]]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = ("onnxsim", "onnxruntime", "sympy", "torch")
print(json.dumps({"code": code, "loaded": sorted(m for m in heavy if sys.modules.get(m) is not None)}))
"""


def test_build_imports_no_onnxsim_package_onnxruntime_or_sympy(tmp_path):
    src = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu_model(), src)
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_AND_LIST_MODULES, str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr[-2000:]
    assert report["loaded"] == []
    assert (tmp_path / "out" / "cnn.tflite").is_file()
