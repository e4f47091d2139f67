"""The onnx target (fp32 / fp16 with float32 I/O / int8 Q/DQ) and third-party target plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx

from mconv.metrics import compare_arrays
from tests.conftest import ROOT, assert_clean_error
from tests.models import randomized_light_model, run_ort


def _light(tmp_path, name="squeezenet"):
    p = tmp_path / f"{name}.onnx"
    onnx.save(randomized_light_model(name), str(p))
    return p


def test_fp32_build_verifies_and_matches(cli, in_tmp):
    src = _light(in_tmp)
    r = cli("build", src, "-t", "onnx", "--json")
    assert r.code == 0, r.err
    v = r.json["verification"]
    assert v["passed"] and float(v["outputs"][0]["rel"]) <= 1e-4


def test_fp16_keeps_float32_io(cli, in_tmp):
    src = _light(in_tmp)
    r = cli("build", src, "-t", "onnx", "--fp16", "--json")
    assert r.code == 0, r.err
    m = onnx.load(r.json["artifacts"][0])
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    assert r.json["verification"]["outputs"][0]["cosine"] >= 0.9999


def test_int8_qdq_built_from_calibration_data(cli, in_tmp):
    src = _light(in_tmp)
    calib = in_tmp / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.save(calib / f"{i}.npy", rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32))
    r = cli("build", src, "-t", "onnx", "--int8", "--calib", calib, "--json")
    assert r.code == 0, r.err
    m = onnx.load(r.json["artifacts"][0])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}
    # Independent check with onnxruntime on a fresh sample (not one the build verified on).
    x = rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    name = m.graph.input[0].name
    ref = run_ort(onnx.load(str(src)), {name: x})[0]
    got = run_ort(m, {name: x})[0]
    assert compare_arrays("out", ref, got).cosine >= 0.99
    assert any("fewer than" in w for w in r.json["warnings"])  # 8 samples < 300 asked


def test_int8_without_calibration_is_a_usage_error(cli, in_tmp):
    src = _light(in_tmp)
    assert_clean_error(cli("build", src, "-t", "onnx", "--int8"), 2, "--calib")
    assert not (in_tmp / "squeezenet_onnx").exists()


def test_verification_failure_writes_nothing(cli, in_tmp):
    src = _light(in_tmp)
    # An impossible tolerance: the fp16 model cannot match fp32 to 1e-9.
    r = cli("build", src, "-t", "onnx", "--fp16", "--rtol", "1e-9")
    assert r.code == 3
    assert "--keep-failed" in r.err
    assert not (in_tmp / "squeezenet_onnx").exists()
    assert [p.name for p in in_tmp.iterdir() if p.name.startswith(".")] == []
    r = cli("build", src, "-t", "onnx", "--fp16", "--rtol", "1e-9", "--keep-failed")
    assert r.code == 3
    assert (in_tmp / "squeezenet_onnx" / "squeezenet.onnx").is_file()


def _plugin_dir(tmp_path):
    d = tmp_path / "site"
    pkg = d / "mconv_echo_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from mconv.modelio import save_onnx
        from mconv.targets import Artifact, Target
        from mconv.targets.onnx import OnnxRunner


        class EchoTarget(Target):
            name = "echo"
            description = "test plugin: writes the optimized ONNX as .echo.onnx"
            precisions = ("fp32",)

            def write(self, model, out_dir, stem, options):
                files = save_onnx(model, out_dir / f"{stem}.echo.onnx")
                return Artifact(self.name, files[0], files, options.precision)

            def runner(self, artifact, *, threads=None):
                r = OnnxRunner(artifact, threads=threads)
                r.load()
                return r
    """)
    )
    dist = d / "mconv_echo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mconv-echo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mconv.targets]\necho = mconv_echo_plugin:EchoTarget\nbroken = mconv_no_such_module:Nope\n"
    )
    return d


def test_entry_point_plugin_is_listed_and_builds(tmp_path, mconv_proc):
    site = _plugin_dir(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    r = mconv_proc("targets", "--json", env=env, cwd=tmp_path)
    assert r.code == 0, r.err
    rows = {t["name"]: t for t in json.loads(r.out)["targets"]}
    assert rows["echo"]["error"] is None and rows["echo"]["source"].startswith("plugin")
    assert "mconv_no_such_module" in rows["broken"]["error"]  # listed with its import error
    src = _light(tmp_path)
    r = mconv_proc("build", src, "-t", "echo", "--json", env=env, cwd=tmp_path)
    assert r.code == 0, r.err
    assert json.loads(r.out)["verification"]["passed"]
    assert (tmp_path / "squeezenet_echo" / "squeezenet.echo.onnx").is_file()
    r = mconv_proc("build", src, "-t", "broken", env=env, cwd=tmp_path)
    assert_clean_error(r, 2, "broken", "mconv_no_such_module")


def test_normal_install_maps_the_top_level_folders(tmp_path):
    """A wheel (non-editable) install exposes convert/, passes/, targets/ as mconv.*."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheel_dir.glob("mconv-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(wheel), str(site)], check=True)
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in type(f).__module__]\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import mconv.convert, mconv.passes, mconv.targets, mconv.targets.ncnn\n"
        "print(mconv.passes.__file__)\n"
        "print(sorted(mconv.passes.all_passes()))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    first, second = p.stdout.splitlines()[:2]
    assert first.startswith(str(site))
    assert "fold_constants" in second
