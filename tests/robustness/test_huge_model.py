"""A model whose weights exceed 2 GiB (generated here, never committed) goes through
optimize and the ONNX and OpenVINO targets with external data, verified."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    d = tmp_path_factory.mktemp("huge")
    path = d / "huge.onnx"
    # In a child process: generating 2 GiB here would leave this worker's memory high.
    code = f"from tests.models import write_big_model; print(write_big_model({str(path)!r}, 2.01))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    weight_bytes = int(out.stdout.strip().splitlines()[-1])
    assert weight_bytes > 2**31
    return path


def _assert_external(onnx_path, weight_bytes_min=2**31):
    m = onnx.load(str(onnx_path), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {onnx_path.name + ".data"}
    assert (onnx_path.parent / (onnx_path.name + ".data")).stat().st_size >= weight_bytes_min


def test_optimize_keeps_external_data(huge, tmp_path, mconv_proc):
    out = tmp_path / "huge.opt.onnx"
    r = mconv_proc("optimize", huge, "-o", out, "--json")
    assert r.code == 0, r.err
    _assert_external(out)


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_build_huge_model(huge, tmp_path, mconv_proc, target):
    out = tmp_path / f"out_{target}"
    r = mconv_proc("build", huge, "-t", target, "-o", out, "--json")
    assert r.code == 0, r.err
    import json

    rep = json.loads(r.out)
    assert rep["verification"]["passed"]
    assert float(rep["verification"]["outputs"][0]["rel"]) <= 1e-4
    if target == "onnx":
        _assert_external(out / "huge.onnx")
    else:
        assert (out / "huge.bin").stat().st_size >= 2**31
