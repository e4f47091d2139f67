"""PaddlePaddle sources: export and build from a real paddle.jit.save model (both program
formats), verified; the pair given four ways; missing halves; the environment unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import ROOT, assert_clean_error, block_imports
from tests.models import run_ort

pytest.importorskip("paddle")
pytest.importorskip("paddle2onnx")

SCRIPT = ROOT / "tests" / "convert" / "paddle_models.py"


def _write(prefix: Path, pir: bool) -> Path:
    env = dict(os.environ, FLAGS_enable_pir_api="1" if pir else "0", GLOG_minloglevel="3")
    subprocess.run([sys.executable, str(SCRIPT), str(prefix)], check=True, env=env, capture_output=True)
    return prefix


@pytest.fixture(scope="module")
def pir(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("pir") / "net", pir=True)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("legacy") / "net", pir=False)


def _check_onnx(path: Path, prefix: Path) -> None:
    """The written ONNX against Paddle's own (dygraph) output, computed when the model was saved."""
    sample = np.load(f"{prefix}.sample.npz")
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    got = run_ort(m, {m.graph.input[0].name: sample["x"]})[0]
    ref = sample["y"]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def _verified(report: dict) -> None:
    v = report["verification"]
    assert v["passed"] is True and v["reference"] == "paddle", v
    assert all(float(o["rel"]) <= 1e-4 for o in v["outputs"])


def test_export_pir_model(cli, in_tmp, pir):
    r = cli("export", f"{pir}.json", "--to", "onnx", "--json")
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "paddle" and r.json["exporter"] == "paddle2onnx"
    _verified(r.json)
    assert r.json["artifacts"] == [str(in_tmp / "net.onnx")]
    _check_onnx(in_tmp / "net.onnx", pir)


def test_export_legacy_pdmodel(cli, in_tmp, legacy):
    assert Path(f"{legacy}.pdmodel").is_file()
    r = cli("export", f"{legacy}.pdmodel", "-o", in_tmp / "old.onnx", "--json")
    assert r.code == 0, r.err
    _verified(r.json)
    _check_onnx(in_tmp / "old.onnx", legacy)


@pytest.mark.parametrize("given", ["params", "prefix", "folder"])
def test_the_pair_given_by_its_other_names(cli, in_tmp, pir, given):
    path = {"params": f"{pir}.pdiparams", "prefix": str(pir), "folder": str(pir.parent)}[given]
    r = cli("export", path, "-o", in_tmp / "m.onnx", "--json")
    assert r.code == 0, r.err
    _verified(r.json)
    _check_onnx(in_tmp / "m.onnx", pir)


@pytest.mark.parametrize("target", ["ncnn", "openvino"])
def test_build(cli, in_tmp, pir, target):
    r = cli("build", f"{pir}.json", "--target", target, "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["source_kind"] == "paddle"
    assert rep["verification"]["passed"] is True
    assert all(float(o["rel"]) <= 1e-4 for o in rep["verification"]["outputs"])
    (main,) = (in_tmp / f"net_{target}").glob("*.param" if target == "ncnn" else "*.xml")
    r = cli("verify", f"{pir}.json", main, "--json")  # the Paddle model as verify's source
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "paddle" and r.json["passed"] is True


def test_missing_halves(cli, in_tmp, pir):
    half = in_tmp / "half"
    half.mkdir()
    shutil.copy(f"{pir}.json", half / "net.json")
    assert_clean_error(cli("export", half / "net.json"), 2, "net.pdiparams: missing")
    assert_clean_error(cli("build", half, "--target", "onnx"), 2, "net.pdiparams: missing")
    lone = in_tmp / "lone"
    lone.mkdir()
    shutil.copy(f"{pir}.pdiparams", lone / "w.pdiparams")
    assert_clean_error(cli("export", lone / "w.pdiparams"), 2, "w.json", "missing", "only the weights")
    two = in_tmp / "two"
    two.mkdir()
    for stem in ("a", "b"):
        shutil.copy(f"{pir}.json", two / f"{stem}.json")
        shutil.copy(f"{pir}.pdiparams", two / f"{stem}.pdiparams")
    assert_clean_error(cli("export", two), 2, "2 Paddle models", "a.json, b.json")
    assert not list(in_tmp.glob("*.onnx"))


def test_layout_does_not_apply(cli, in_tmp, pir):
    assert_clean_error(cli("export", f"{pir}.json", "--layout", "nchw"), 2, "--layout", "PaddlePaddle")


def _environment() -> dict:
    """What an export must not change: onnx's version, the installed distributions, and the
    entries of every site-packages folder."""
    code = "import onnx; print(onnx.__version__)"
    onnx_version = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())
    site = sorted({p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)})
    entries = {s: sorted(e for e in os.listdir(s) if e != "__pycache__") for s in site}
    return {"onnx": onnx_version.strip(), "distributions": dists, "site-packages": entries}


def test_export_leaves_the_environment_unchanged(mconv_proc, tmp_path, pir):
    before = _environment()
    home = tmp_path / "home"  # paddle creates ~/.cache/paddle/dataset when imported
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}
    r = mconv_proc("export", f"{pir}.json", "-o", tmp_path / "m.onnx", "--json", cwd=tmp_path, env=env)
    assert r.code == 0, r.err
    assert r.err == ""  # paddle's and paddle2onnx's own printing stays out of stderr
    assert json.loads(r.out)["verification"]["passed"] is True
    after = _environment()
    assert after["onnx"] == before["onnx"]
    assert after["distributions"] == before["distributions"]
    assert after["site-packages"] == before["site-packages"]
    assert sorted(str(f.relative_to(home)) for f in home.rglob("*")) == []


def test_paddle_absent_names_the_extra(mconv_proc, tmp_path, pir):
    env = block_imports(tmp_path / "block", "paddle", "paddle2onnx")
    r = mconv_proc("export", f"{pir}.json", cwd=tmp_path, env=env)
    assert_clean_error(r, 1, "PaddlePaddle is not installed", "mconv[paddle]")
    assert not (tmp_path / "net.onnx").exists()


def test_paddle2onnx_absent_names_the_no_deps_install(mconv_proc, tmp_path, pir):
    env = block_imports(tmp_path / "block", "paddle2onnx")
    r = mconv_proc("export", f"{pir}.json", cwd=tmp_path, env=env)
    assert_clean_error(r, 1, "pip install --no-deps paddle2onnx==2.1.0")
