"""TensorFlow/Keras sources: a real MobileNet-like Keras net as .keras, .h5 and a SavedModel,
exported and built, verified; NHWC by default, --layout nchw; bad inputs; TF absent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import ROOT, assert_clean_error, block_imports
from tests.models import run_ort

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

SCRIPT = ROOT / "tests" / "convert" / "tf_models.py"
FILES = {"keras": "net.keras", "h5": "net.h5", "saved_model": "saved"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """One child process writes every form of the net (TensorFlow is imported once)."""
    out = tmp_path_factory.mktemp("keras")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, env=env, capture_output=True)
    return out


def _check_onnx(path: Path, models: Path, nchw: bool = False) -> onnx.ModelProto:
    """The written ONNX against Keras' own output, computed when the model was saved."""
    sample = np.load(models / "sample.npz")
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    x = sample["x"].transpose(0, 3, 1, 2) if nchw else sample["x"]
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(x.shape)
    got = run_ort(m, {m.graph.input[0].name: x})[0]
    ref = sample["y"]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    return m


@pytest.mark.parametrize("kind", list(FILES))
def test_export(cli, in_tmp, models, kind):
    out = ["-o", in_tmp / "net.onnx"] if kind != "keras" else []  # the default: ./<stem>.onnx
    r = cli("export", models / FILES[kind], "--to", "onnx", *out, "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["source_kind"] == "tf" and rep["exporter"] == "tf2onnx"
    assert rep["verification"]["passed"] is True and rep["verification"]["reference"] == "tf"
    assert all(float(o["rel"]) <= 1e-4 for o in rep["verification"]["outputs"])
    assert rep["artifacts"] == [str(in_tmp / "net.onnx")]
    _check_onnx(in_tmp / "net.onnx", models)  # NHWC, as Keras' users feed it


def test_layout_nchw_moves_the_transposes_inside(cli, in_tmp, models):
    r = cli("export", models / "saved", "--layout", "nchw", "-o", in_tmp / "m.onnx", "--json")
    assert r.code == 0, r.err
    assert r.json["verification"]["passed"] is True
    m = _check_onnx(in_tmp / "m.onnx", models, nchw=True)
    assert m.graph.node[0].op_type == "Transpose"  # the boundary transpose, back to NHWC
    r = cli("optimize", in_tmp / "m.onnx", "-o", in_tmp / "opt.onnx")
    assert r.code == 0, r.err
    ops = [n.op_type for n in onnx.load(str(in_tmp / "opt.onnx")).graph.node]
    assert "Transpose" not in ops, ops  # cancelled against tf2onnx's NHWC->NCHW before the Conv


@pytest.mark.parametrize(("target", "kind", "layout"), [("ncnn", "saved_model", "nchw"), ("openvino", "keras", None)])
def test_build(cli, in_tmp, models, target, kind, layout):
    args = ["--layout", layout] if layout else []
    r = cli("build", models / FILES[kind], "--target", target, *args, "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["source_kind"] == "tf"
    assert rep["verification"]["passed"] is True
    assert all(float(o["rel"]) <= 1e-4 for o in rep["verification"]["outputs"])
    stem = "saved" if kind == "saved_model" else "net"
    assert (in_tmp / f"{stem}_{target}").is_dir()


def test_bad_inputs(cli, in_tmp, models):
    r = cli("export", models / "only.weights.h5")
    assert_clean_error(r, 2, "only.weights.h5")
    empty = in_tmp / "empty_dir"
    empty.mkdir()
    assert_clean_error(cli("export", empty), 2, "empty_dir", "holds no model")
    with zipfile.ZipFile(in_tmp / "x.keras", "w") as z:
        z.writestr("notes.txt", "not a model")
    assert_clean_error(cli("export", in_tmp / "x.keras"), 2, "x.keras")
    assert_clean_error(cli("export", models / "net.keras", "--layout", "chwn"), 2, "--layout chwn")
    assert_clean_error(cli("export", models / "net.keras", "--input", "nope:1x8x8x3"), 2, "--input nope")
    assert not list(in_tmp.glob("*.onnx"))


@pytest.mark.parametrize("kind", ["keras", "saved_model"])
def test_export_leaves_nothing_in_the_users_home(mconv_proc, tmp_path, models, kind):
    # Importing Keras writes ~/.keras/keras.json (read by the user's later Keras sessions),
    # and matplotlib (imported by TensorFlow) its config and font cache.
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}
    r = mconv_proc("export", models / FILES[kind], "-o", tmp_path / "m.onnx", cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    assert (tmp_path / "m.onnx").is_file()
    assert sorted(str(f.relative_to(home)) for f in home.rglob("*")) == []


def test_tensorflow_absent_names_the_extra(mconv_proc, tmp_path, models):
    env = block_imports(tmp_path / "block", "tensorflow", "tf2onnx", "keras")
    r = mconv_proc("export", models / "net.keras", cwd=tmp_path, env=env)
    assert_clean_error(r, 1, "TensorFlow is not installed", "mconv[tf]")


def test_recipe_with_layout(cli, tmp_path, models):
    rdir = tmp_path / "recipes"
    rdir.mkdir()
    shutil.copy(models / "net.keras", rdir / "net.keras")
    recipe = rdir / "keras.yaml"
    recipe.write_text(
        "version: 1\nsource:\n  path: net.keras\nexport:\n  layout: nchw\n"
        "targets:\n  - target: onnx\n    precision: fp32\nverify:\n  samples: 1\n"
    )
    r = cli("run", recipe, "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.out + r.err
    exported = next((tmp_path / "out").rglob("export/keras.onnx"))
    _check_onnx(exported, models, nchw=True)
