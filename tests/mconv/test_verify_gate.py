"""The verification gate against real runtimes: an FP32 artifact that differs only by
float noise passes by the model's measured rounding floor; broken weights, even one,
still fail; ``--rtol`` still overrides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import assert_clean_error
from tests.mconv.test_verify import build, copy_artifact, scale_bin_range
from tests.models import noisy_head_cnn

pytest.importorskip("openvino")
pytest.importorskip("ncnn")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gate")
    src = d / "noisy.onnx"
    onnx.save(noisy_head_cnn(), str(src))
    return src


@pytest.mark.parametrize("target", ["openvino", "ncnn"])
def test_float_noise_above_1e4_passes_by_the_floor(cli, noisy, tmp_path, target):
    r = cli("build", noisy, "--target", target, "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    v = r.json["verification"]
    assert v["tolerance"] == "rel<=max(0.0001, 20x floor)"
    (out,) = v["outputs"]
    # The fixed 1e-4 would refuse this correct artifact; onnxruntime itself, optimizations
    # off and weights one ulp away, moves the output as much.
    assert out["rel"] > 1e-4 and out["passed"]
    assert out["floor"] > 1e-4 and out["ratio"] < 5
    assert out["bound"] == pytest.approx(20 * out["floor"]) and v["floor_probe"] == "measured"


def test_rtol_overrides_the_floor(cli, noisy, tmp_path):
    out = tmp_path / "out"
    r = cli("build", noisy, "--target", "ncnn", "-o", out, "--rtol", "1e-4")
    assert_clean_error(r, 3, "rel<=0.0001", "nothing written", "--locate")
    assert not out.exists()


@pytest.fixture(scope="module")
def noisy_ov(noisy, tmp_path_factory) -> Path:
    return build(noisy, "openvino", tmp_path_factory.mktemp("gate_ov") / "ov")


def _const_range(xml: Path, name: str) -> tuple[int, int]:
    import xml.etree.ElementTree as ET

    layer = next(x for x in ET.parse(xml).getroot().iter("layer") if x.get("type") == "Const" and x.get("name") == name)
    data = layer.find("data")
    assert data.get("element_type") == "f32"
    return int(data.get("offset")), int(data.get("size")) // 4


def test_corrupted_weights_fail(cli, noisy, noisy_ov, tmp_path):
    art = copy_artifact(noisy_ov, tmp_path / "bad")
    offset, count = _const_range(art, "conv3.weight")
    scale_bin_range(art.with_suffix(".bin"), offset, count // 8, 3.0)
    r = cli("verify", noisy, art)
    assert_clean_error(r, 3, "rounding floor", "--locate", "--rtol")
    r = cli("verify", noisy, art, "--locate", "--json")
    loc = r.json["report"]["results"][0]["locate"]
    assert loc["found"] and loc["node"] == "conv3"  # every tensor against its own floor
    assert all(t["floor"] is not None for t in loc["tensors"])


def test_one_wrong_weight_fails(cli, noisy, noisy_ov, tmp_path):
    art = copy_artifact(noisy_ov, tmp_path / "bad")
    offset, count = _const_range(art, "conv3.weight")
    binf = art.with_suffix(".bin")
    w = np.frombuffer(binf.read_bytes(), np.float32, count, offset).copy()
    j = int(np.argmax(np.abs(w)))
    scale_bin_range(binf, offset + 4 * j, 1, -1.0)  # one weight of 2304 with its sign flipped
    r = cli("verify", noisy, art, "--json")
    assert r.code == 3
    (row,) = r.json["report"]["results"]
    (out,) = row["outputs"]
    assert not out["passed"] and out["ratio"] > 20
    assert "rounding floor" in row["advice"]
