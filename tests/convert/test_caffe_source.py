"""Caffe through the source registry: ``mconv export``/``build`` on a ``.prototxt`` with its
``.caffemodel`` (found by name or given with ``--weights``), verified against the reader's
numpy reference; the exported ONNX checked against the plain numpy reading in test_caffe.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import assert_clean_error
from tests.convert.test_caffe import EXPECTED, _close, _feeds, _ort, nets


def test_export_finds_the_weights_by_name_and_computes_what_caffe_does(tmp_path, in_tmp, cli):
    prototxt, _, weights = nets.write("resblock", tmp_path / "nets")
    r = cli("export", prototxt, "-o", in_tmp / "resblock.onnx", "--json")
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "caffe"
    model = onnx.load(str(in_tmp / "resblock.onnx"))
    feeds = _feeds(model)
    _close(_ort(model, feeds), EXPECTED["resblock"](*feeds.values(), weights))


@pytest.mark.parametrize("target", ["ncnn", "openvino"])
def test_build_with_weights_option(tmp_path, in_tmp, cli, target):
    pytest.importorskip(target)
    prototxt, caffemodel, _ = nets.write("ssd_head", tmp_path / "nets")
    elsewhere = tmp_path / "weights" / "trained.caffemodel"
    elsewhere.parent.mkdir()
    caffemodel.rename(elsewhere)
    r = cli("build", prototxt, "--weights", elsewhere, "-t", target, "-o", in_tmp / "out", "--json")
    assert r.code == 0, r.err
    assert any((in_tmp / "out").iterdir())


def test_a_missing_caffemodel_names_the_half_and_the_option(tmp_path, in_tmp, cli):
    prototxt, caffemodel, _ = nets.write("lenet", tmp_path / "nets")
    caffemodel.unlink()
    r = cli("export", prototxt, "-o", in_tmp / "lenet.onnx")
    assert_clean_error(r, 2, "lenet", "--weights")
    assert not (in_tmp / "lenet.onnx").exists()


def test_unsupported_layers_are_a_conversion_error(tmp_path, in_tmp, cli):
    prototxt, _, _ = nets.write("unsupported", tmp_path / "nets")
    r = cli("export", prototxt, "-o", in_tmp / "u.onnx")
    assert r.code == 1, r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert not (in_tmp / "u.onnx").exists()


def test_weights_not_matching_the_net_fail_verification_or_loading(tmp_path, in_tmp, cli):
    """A caffemodel of another net with the same layer names but other shapes: exit 2, one line."""
    prototxt, caffemodel, weights = nets.write("lenet", tmp_path / "nets")
    bad = {k: [np.zeros(np.asarray(b).size + 1, np.float32) for b in v] for k, v in weights.items()}
    text = prototxt.read_text()
    caffemodel.write_bytes(nets.caffemodel_bytes("lenet", bad, nets._types(text), False))
    r = cli("export", prototxt, "-o", in_tmp / "lenet.onnx")
    assert_clean_error(r, 2, "lenet.caffemodel")
