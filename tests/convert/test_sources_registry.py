"""The source registry: built-ins in detection order, detection by content, options that do
not apply, and a third-party source going through export and build like the built-ins."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.convert import Source, SourceExport, all_sources, detect, get_source, register, unregister
from mconv.convert.base import sample_feeds
from tests.conftest import ROOT, assert_clean_error
from tests.models import conv_bn_relu_model, run_ort, save_torchscript_cnn


def test_builtins_in_detection_order():
    names = [e.name for e in all_sources()]
    assert names[:5] == ["tf", "paddle", "caffe", "torch", "onnx"]
    assert names[-1] == "onnx"  # the fallback is asked last
    for name in names[:5]:
        src = get_source(name)
        assert src.name == name and src.framework and src.description


def test_duplicate_names_are_rejected():
    class Again(Source):
        name = "torch"
        framework = "x"

        def detect(self, path):
            return False

        def export(self, path, opts):
            raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        register(Again)


def test_detection_by_content(tmp_path):
    onnx_file = tmp_path / "m.weird"
    onnx.save(conv_bn_relu_model(), str(onnx_file))
    assert detect(onnx_file).name == "onnx"
    assert detect(save_torchscript_cnn(tmp_path / "cnn.anything")).name == "torch"
    keras_zip = tmp_path / "k.zip"  # a Keras 3 archive is a zip, like PyTorch's
    with zipfile.ZipFile(keras_zip, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("metadata.json", "{}")
    assert detect(keras_zip).name == "tf"
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    assert detect(tmp_path / "saved").name == "tf"
    h5 = tmp_path / "m.bin"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert detect(h5).name == "tf"
    pir = tmp_path / "p.json"
    pir.write_text('{"base_code":{"magic":"pir","version":4},"program":{}}')
    assert detect(pir).name == "paddle"
    assert detect(tmp_path / "p").name == "paddle"  # the prefix of a pair
    plain = tmp_path / "other.json"
    plain.write_text('{"a": 1}')
    assert detect(plain).name == "onnx"  # nothing claims it; loading says it is no ONNX


def test_detection_imports_no_framework(tmp_path):
    code = (
        "import sys, zipfile; from pathlib import Path; from mconv.convert import detect\n"
        f"p = Path({str(tmp_path)!r}) / 'k.keras'\n"
        "with zipfile.ZipFile(p, 'w') as z: z.writestr('config.json', '{}'); z.writestr('metadata.json', '{}')\n"
        "assert detect(p).name == 'tf'\n"
        "heavy = {'tensorflow', 'paddle', 'torch', 'keras', 'tf2onnx', 'paddle2onnx'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_bad_paths(cli, in_tmp):
    (in_tmp / "empty.onnx").write_bytes(b"")
    assert_clean_error(cli("export", in_tmp / "empty.onnx"), 2, "empty.onnx: the file is empty")
    (in_tmp / "nothing").mkdir()
    assert_clean_error(cli("build", in_tmp / "nothing", "--target", "onnx"), 2, "nothing", "holds no model")
    assert_clean_error(cli("export", in_tmp / "absent.pt"), 2, "absent.pt: no such file")
    (in_tmp / "junk.bin").write_bytes(b"\x01\x02 definitely not a model")
    assert_clean_error(cli("export", in_tmp / "junk.bin"), 2, "junk.bin", "not a model file mconv exports")


def test_options_that_do_not_apply(cli, in_tmp):
    onnx.save(conv_bn_relu_model(), str(in_tmp / "m.onnx"))
    assert_clean_error(cli("export", in_tmp / "m.onnx"), 2, "already ONNX")
    assert_clean_error(
        cli("build", in_tmp / "m.onnx", "--target", "onnx", "--layout", "nchw"), 2, "--layout nchw", "ONNX"
    )
    pt = save_torchscript_cnn(in_tmp / "cnn.pt")
    r = cli("export", pt, "--weights", in_tmp / "m.onnx", "--input", "x:1x3x32x32")
    assert_clean_error(r, 2, "--weights", "PyTorch source takes no separate weights file")
    assert not (in_tmp / "cnn.onnx").exists()


class LinearSource(Source):
    """A third-party 'framework': ``W`` and ``b`` in a ``.linear.npz``; its runtime is numpy."""

    name = "linear-test"
    framework = "Linear"
    description = "y = x @ W + b"
    suffixes = (".linear.npz",)
    skew = 0.0  # a subclass with a wrong runtime, to see verification fail

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(".linear.npz")

    def export(self, path: Path, opts) -> SourceExport:
        with np.load(path, allow_pickle=False) as z:
            w, b = z["W"], z["b"]
        graph = helper.make_graph(
            [helper.make_node("Gemm", ["x", "W", "b"], ["y"])],
            "linear",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, w.shape[0]])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, w.shape[1]])],
            [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        feeds = sample_feeds(model, opts)
        return SourceExport(model, "linear", [feeds["x"] @ w + b + self.skew], feeds)


class SkewedLinearSource(LinearSource):
    name = "linear-skewed"
    suffixes = (".skewed.npz",)
    skew = 0.5

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(".skewed.npz")


class BrokenSource(LinearSource):
    name = "broken-test"

    def detect(self, path: Path) -> bool:
        raise RuntimeError("boom")


@pytest.fixture
def plugins():
    for cls in (BrokenSource, LinearSource, SkewedLinearSource):  # the broken one is asked first
        register(cls, origin="plugin tests")
    yield
    for cls in (LinearSource, SkewedLinearSource, BrokenSource):
        unregister(cls.name)


def _weights(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, W=rng.standard_normal((8, 4)).astype(np.float32), b=rng.standard_normal(4).astype(np.float32))
    return path


def test_a_plugin_source_exports_and_builds(cli, in_tmp, plugins):
    src = _weights(in_tmp / "fc.linear.npz")
    r = cli("export", src, "--json")  # the broken plugin's detect() is skipped, not fatal
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "linear-test" and r.json["verification"]["reference"] == "linear-test"
    m = onnx.load(str(in_tmp / "fc.onnx"))  # the stem without the source's suffix
    with np.load(src) as z:
        x = np.ones((2, 8), np.float32)
        assert np.allclose(run_ort(m, {"x": x})[0], x @ z["W"] + z["b"], rtol=1e-5, atol=1e-5)
    assert "detect() failed" in {e.name: e for e in all_sources()}["broken-test"].error
    r = cli("build", src, "--target", "onnx", "--json")
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "linear-test" and (in_tmp / "fc_onnx").is_dir()


def test_export_verification_fails_beyond_tolerance(cli, in_tmp, plugins):
    src = _weights(in_tmp / "fc.skewed.npz")
    r = cli("export", src, "-o", in_tmp / "fc.onnx")
    assert_clean_error(r, 3, "ONNX export differs from Linear", "nothing written")
    assert not (in_tmp / "fc.onnx").exists()


def test_sources_command_lists_plugins_and_their_errors(cli, plugins, tmp_path):
    (tmp_path / "x.linear.npz").write_bytes(b"PK")  # any file: the broken plugin's detect() raises
    detect(tmp_path / "x.linear.npz")
    r = cli("sources", "--json")
    assert r.code == 0, r.err
    rows = {row["name"]: row for row in r.json["sources"]}
    assert [row["name"] for row in r.json["sources"]][-1] == "onnx"
    assert rows["paddle"]["extra"] == "paddle" and rows["tf"]["extra"] == "tf"
    assert rows["linear-test"]["framework"] == "Linear" and rows["linear-test"]["source"] == "plugin tests"
    assert "RuntimeError: boom" in rows["broken-test"]["error"]
    r = cli("sources")
    assert r.code == 0 and all(name in r.out for name in ("paddle", "caffe", "broken-test")), r.out
