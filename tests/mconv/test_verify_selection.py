"""Outputs behind a selection (TopK, ArgMax, NMS): compared after matching rows, so that
near-tied candidates in another order pass while wrong rows still fail."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest

from mconv.metrics import compare_outputs, default_tolerance
from mconv.selection import selected_outputs
from tests.conftest import assert_clean_error
from tests.mconv.test_verify import chain_model, copy_artifact, scale_openvino_const
from tests.models import tied_detector_inputs, topk_detector


def test_outputs_behind_topk_are_found():
    assert selected_outputs(topk_detector()) == {"dets": "TopK 'topk'"}
    assert selected_outputs(chain_model()) == {}


def test_argmax_labels_are_not_reordered_rows():
    m = chain_model()
    m.graph.node.append(onnx.helper.make_node("ArgMax", ["logits"], ["label"], axis=1))
    m.graph.output[0].name = "label"
    assert selected_outputs(m) == {}


def _dets(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((1, 16, 12)).astype(np.float32)


def test_reordered_rows_pass_only_when_matched():
    ref = _dets()
    got = ref[:, np.random.default_rng(1).permutation(16)]
    refs, gots = [{"dets": ref}], [{"dets": got}]
    tol = default_tolerance("fp32")
    assert not compare_outputs(refs, gots, tol).passed
    comp = compare_outputs(refs, gots, tol, selection={"dets": "TopK 'topk'"})
    assert comp.passed and comp.outputs[0].rule == "matched rows (TopK 'topk')"
    assert comp.outputs[0].max_abs == 0


def test_a_wrong_row_fails_even_when_matched():
    ref = _dets()
    got = ref[:, ::-1].copy()
    got[0, 3, :4] += 0.05  # one detection's box moved
    comp = compare_outputs([{"dets": ref}], [{"dets": got}], default_tolerance("fp32"), selection={"dets": "TopK"})
    assert not comp.passed and comp.outputs[0].rel == pytest.approx(0.05, rel=0.05)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("det")
    src = d / "det.onnx"
    onnx.save(topk_detector(), str(src))
    data = d / "inputs"
    data.mkdir()
    for s in range(2):
        np.savez(data / f"s{s}.npz", **tied_detector_inputs(s))
    return src, data


def test_topk_detector_verifies_on_openvino(cli, detector, tmp_path):
    pytest.importorskip("openvino")
    src, data = detector
    # Candidates come in pairs whose scores differ by ~1e-7: OpenVINO keeps some pairs in
    # the other order than onnxruntime (element-wise, rel ~0.9); the detections are the same.
    r = cli("build", src, "--target", "openvino", "-o", tmp_path / "ov", "--inputs", data, "--json")
    assert r.code == 0, r.err
    (out,) = r.json["verification"]["outputs"]
    assert out["rule"] == "matched rows (TopK 'topk')" and out["passed"] and out["rel"] < 1e-4
    # Within 1e-4, build does not spend a run on the rounding floor.
    assert r.json["verification"]["floor_probe"] == "not needed" and out["floor"] is None


def test_broken_box_head_fails_on_openvino(cli, detector, tmp_path):
    pytest.importorskip("openvino")
    src, data = detector
    r = cli("build", src, "--target", "openvino", "-o", tmp_path / "ov", "--inputs", data)
    assert r.code == 0, r.err
    art = copy_artifact(tmp_path / "ov" / "det.xml", tmp_path / "bad")
    # OpenVINO stores the box head's weights transposed, as a Const of its own name.
    consts = [x for x in ET.parse(art).getroot().iter("layer") if x.get("type") == "Const"]
    (box,) = [c for c in consts if c.find("data").get("shape") == "4, 16"]
    scale_openvino_const(art, box.get("name"), 1.5)
    r = cli("verify", src, art, "--inputs", data)
    assert_clean_error(r, 3, "matched rows (TopK 'topk')", "--locate")
