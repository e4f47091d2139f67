"""The Python API: mconv.export / optimize / build / verify / bench on real runtimes,
returning typed results whose ``to_json()`` is what the CLI prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import mconv
from mconv.errors import UsageError, VerificationError
from mconv.results import BenchResult, BuildResult, ExportResult, OptimizeResult, VerifyResult

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> ExportResult:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("api")
    src = folder / "net.pt"
    net = Net().eval()
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 16, 16)), str(src))
    return mconv.export(src, folder / "net.onnx", inputs={"input": (1, 3, 16, 16)})


def test_import_stays_light():
    code = "import sys, mconv; mconv.build; print(sorted(m for m in ('onnx', 'torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_export_returns_a_verified_onnx(exported):
    assert isinstance(exported, ExportResult)
    assert exported.onnx.is_file() and exported.onnx.suffix == ".onnx"
    onnx.checker.check_model(onnx.load(str(exported.onnx)))
    assert exported.verification is not None and exported.verification.passed
    assert exported.verification.reference == "torch"
    assert exported.to_json()["artifacts"] == [str(exported.onnx)]


def test_optimize(exported, tmp_path):
    r = mconv.optimize(exported.onnx, tmp_path / "net.opt.onnx")
    assert isinstance(r, OptimizeResult) and r.onnx.is_file()
    assert r.nodes_after <= r.nodes_before and r.passes
    assert [p["pass"] for p in r.to_json()["passes"]] == [p.name for p in r.passes]


def test_build_matches_the_cli(exported, tmp_path):
    r = mconv.build(exported.onnx, "ncnn", tmp_path / "api", options={})
    assert isinstance(r, BuildResult) and r.target == "ncnn" and r.precision == "fp32"
    assert r.artifact.main.suffix == ".param" and r.artifact.main.is_file()
    assert r.verification is not None and r.verification.passed
    worst = r.verification.comparison.worst()
    assert worst is not None and worst.rel < 1e-4
    cli = subprocess.run(
        [sys.executable, "-m", "mconv", "build", str(exported.onnx), "--target", "ncnn", "-o", str(tmp_path / "cli"),
         "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    from_api = r.to_json()
    assert set(from_cli) == set(from_api)
    for key in ("command", "target", "precision", "source_kind", "options"):
        assert from_cli[key] == from_api[key]
    assert [Path(f).name for f in from_cli["artifacts"]] == [Path(f).name for f in from_api["artifacts"]]


def test_build_int8_with_target_options(exported, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(calib / f"{i}.npy", rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    r = mconv.build(exported.onnx, "onnx", tmp_path / "q", precision="int8", calib=calib,
                    options={"calib_method": "minmax", "ignore": ["Gemm"]})  # fmt: skip
    assert r.options["calib_method"] == "minmax" and r.options["ignore"] == ["Gemm"]
    ops = {n.op_type for n in onnx.load(str(r.artifact.main)).graph.node}
    assert "QuantizeLinear" in ops
    assert r.verification.passed


def test_build_refuses_bad_options_before_work(exported, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(UsageError, match="target 'ncnn' has no option 'workspace'") as e:
        mconv.build(exported.onnx, "ncnn", out, options={"workspace": "1G"})
    assert e.value.exit_code == 2
    with pytest.raises(UsageError, match="applies to int8 builds"):
        mconv.build(exported.onnx, "ncnn", out, options={"calib_method": "kl"})
    with pytest.raises(UsageError, match="choose one of kl, minmax"):
        mconv.build(exported.onnx, "ncnn", out, precision="int8", calib=exported.onnx, options={"calib_method": "x"})
    assert not out.exists()


def test_verify_and_bench(exported, tmp_path):
    built = mconv.build(exported.onnx, "onnx", tmp_path / "good")
    # A copy with one weight tensor scaled: verify must report it, not raise.
    bad = onnx.load(str(built.artifact.main))
    init = max(bad.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
    bad_path = tmp_path / "bad.onnx"
    onnx.save(bad, bad_path)
    v = mconv.verify(exported.onnx, [built.artifact.main, bad_path])
    assert isinstance(v, VerifyResult)
    assert [r.passed for r in v.results] == [True, False] and not v.passed
    assert v.results[1].status == "failed"
    b = mconv.bench([built.artifact.main], iters=3, warmup=1)
    assert isinstance(b, BenchResult) and b.ok
    assert b.results[0].target == "onnx" and b.results[0].median_ms > 0


def test_build_failing_verification_raises(exported, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(VerificationError) as e:
        mconv.build(exported.onnx, "onnx", out, precision="fp16", tolerance={"min_cos": 1.0, "rtol": 0.0})
    assert e.value.exit_code == 3 and not out.exists()
