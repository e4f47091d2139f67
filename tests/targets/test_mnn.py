"""MNN target: real graphs converted by MNN's own converter, run by MNN's runtime and
compared with onnxruntime on the source ONNX at the project's tolerances.

Models: light models of the onnx package (weights folded and re-drawn from a seed, see
``tests.models.randomized_light_model``) and a torch-exported ResNet-style CNN with a
dynamic batch axis. A build must never run pip or reach the network: MNN's Python
wrappers (``MNN.tools``) do both on import, so the last test runs a real build with pip
replaced by a recorder on PATH and an audit hook that records (and refuses) connections
and name look-ups in every process of the build.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mconv.errors import EXIT_CONVERSION, EXIT_USAGE, InputError, UnsupportedOpsError
from mconv.metrics import compare_outputs, default_tolerance
from mconv.targets import BuildOptions, get_target
from mconv.targets.base import Artifact
from tests.conftest import ROOT, assert_clean_error
from tests.models import randomized_light_model, run_ort

pytest.importorskip("MNN", reason="MNN is not installed: pip install 'mconv[mnn]'")

from mconv.targets.mnn import MnnRunner, MnnTarget
from mconv.targets.mnn.convert import convert_onnx
from mconv.targets.mnn.files import read_net
from mconv.targets.mnn.ops import SUPPORTED_OPS, converter_ops

THREADS = 2

# ---------------------------------------------------------------------------
# Models and helpers


@functools.cache
def _light_bytes(name: str) -> bytes:
    return randomized_light_model(name).SerializeToString()


def light(name: str) -> onnx.ModelProto:
    return onnx.load_from_string(_light_bytes(name))


@functools.cache
def _torch_cnn_bytes() -> bytes:
    torch = pytest.importorskip("torch")
    from tests.models import small_cnn

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still exact
        warnings.simplefilter("ignore")
        torch.onnx.export(
            small_cnn(), (torch.zeros(1, 3, 32, 32),), buf, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    return buf.getvalue()


def torch_cnn() -> onnx.ModelProto:
    return onnx.load_from_string(_torch_cnn_bytes())


def image_feeds(model: onnx.ModelProto, count: int, seed: int, batch: int | None = None) -> list[dict]:
    """Smooth pseudo-images (gradient + blob + noise) for the model's one NCHW input."""
    inp = model.graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    if batch is not None:
        dims[0] = batch
    n, c, h, w = dims
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = []
    for _ in range(count):
        img = np.empty(dims, np.float32)
        for b in range(n):
            for ch in range(c):
                a, bb, cx, cy = rng.uniform(-1, 1, 4)
                img[b, ch] = a * xx + bb * yy + 1.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * 4)
                img[b, ch] += 0.2 * rng.standard_normal((h, w))
        out.append({inp.name: img})
    return out


def build(model, out: Path, precision="fp32", calib=None, **values) -> Artifact:
    target = MnnTarget()
    options = BuildOptions(precision=precision, calib=calib, target=target.make_options(values, precision=precision))
    out.mkdir(parents=True, exist_ok=True)
    return target.write(model, out, "model", options)


def check(model, artifact: Artifact, feeds, precision: str):
    """Run the artifact with MNN and the model with onnxruntime; assert the shared gate."""
    names = [o.name for o in model.graph.output]
    refs = [dict(zip(names, run_ort(model, f))) for f in feeds]
    runner = get_target("mnn").runner(artifact, threads=THREADS)
    gots = [runner.infer(f) for f in feeds]
    for g, r in zip(gots, refs):
        assert sorted(g) == sorted(r)
        assert all(g[k].shape == r[k].shape for k in r)
    comp = compare_outputs(refs, gots, default_tolerance(precision))
    assert comp.passed, comp.summary()
    return comp


def unsupported_model() -> onnx.ModelProto:
    """Relu -> Hardmax -> Relu: MNN's converter has no Hardmax."""
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="relu_in"),
        helper.make_node("Hardmax", ["y"], ["z"], name="hardmax_node"),
        helper.make_node("Relu", ["z"], ["out"], name="relu_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# ---------------------------------------------------------------------------
# Registry, op list


def test_registry_and_lazy_import():
    assert isinstance(get_target("mnn"), MnnTarget)
    code = (
        "import mconv.targets.mnn, sys; print(any(m == 'MNN' or m.startswith(('MNN.', '_tools')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_listed_ops_are_the_converters():
    listed = converter_ops()
    assert {"Conv", "Gemm", "MatMul", "Softmax", "LayerNormalization"} <= listed
    assert set(SUPPORTED_OPS) <= listed, sorted(set(SUPPORTED_OPS) - listed)
    assert "Hardmax" not in listed


# ---------------------------------------------------------------------------
# Real graphs, every precision


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_fp32_light_models_match_onnxruntime(name, tmp_path):
    model = light(name)
    art = build(model, tmp_path)
    assert art.files == [tmp_path / "model.mnn"] and sorted(p.name for p in tmp_path.iterdir()) == ["model.mnn"]
    comp = check(model, art, image_feeds(model, 2, seed=1), "fp32")
    assert comp.outputs[0].rel <= 1e-4
    net = read_net(art.main)
    assert (net.precision, net.outputs) == ("fp32", [o.name for o in model.graph.output])


def test_fp16_halves_the_file_and_matches(tmp_path):
    model = light("squeezenet")
    fp32 = build(model, tmp_path / "fp32")
    fp16 = build(model, tmp_path / "fp16", precision="fp16")
    assert fp16.main.stat().st_size < 0.6 * fp32.main.stat().st_size
    check(model, fp16, image_feeds(model, 2, seed=2), "fp16")
    assert MnnTarget.recognise(fp16.main).precision == "fp16"


@pytest.mark.parametrize("mode", ["weight", "full"])
def test_int8_modes_quantize_and_stay_close(mode, tmp_path):
    model = light("squeezenet")
    calib = image_feeds(model, 4, seed=3)
    fp32 = build(model, tmp_path / "fp32")
    art = build(model, tmp_path / mode, precision="int8", calib=calib, int8_mode=mode)
    assert art.main.stat().st_size < 0.4 * fp32.main.stat().st_size
    check(model, art, image_feeds(model, 2, seed=4), "int8")
    found = MnnTarget.recognise(art.main)
    assert (found.precision, found.meta["int8_mode"]) == ("int8", mode)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_torch_cnn_every_precision_and_dynamic_batch(precision, tmp_path):
    model = torch_cnn()
    calib = image_feeds(model, 8, seed=5) if precision == "int8" else None
    art = build(model, tmp_path, precision=precision, calib=calib, **({"int8_mode": "full"} if calib else {}))
    check(model, art, image_feeds(model, 2, seed=6), precision)
    check(model, art, image_feeds(model, 1, seed=7, batch=3), precision)  # the batch axis stays dynamic
    (inp,) = MnnTarget().artifact_inputs(MnnTarget.recognise(art.main))
    assert (inp.name, inp.shape[1:], inp.dtype) == ("image", (3, 32, 32), "float32")
    again = build(
        torch_cnn(), tmp_path / "again", precision=precision, calib=calib, **({"int8_mode": "full"} if calib else {})
    )
    assert again.main.read_bytes() == art.main.read_bytes()  # MNN's random model UUID is made stable


# ---------------------------------------------------------------------------
# The CLI: build, verify, bench, inspect


def test_cli_build_verify_bench_inspect(cli, in_tmp):
    src = in_tmp / "cnn.onnx"
    onnx.save(torch_cnn(), src)
    r = cli("build", src, "--target", "mnn", "--json")
    assert r.code == 0, r.err
    assert r.json["verification"]["passed"] and r.err == ""
    (main,) = [Path(p) for p in r.json["artifacts"]]
    assert main == in_tmp / "cnn_mnn" / "cnn.mnn"
    r = cli("verify", src, main, "--json")
    assert r.code == 0, r.err
    assert r.json["results"][0]["target"] == "mnn" and r.json["results"][0]["passed"]
    r = cli("bench", main, "--iters", "3", "--warmup", "1", "--json")
    assert r.code == 0, r.err
    assert r.json["results"][0]["status"] == "ok" and r.json["results"][0]["latency_ms"]["median"] > 0
    r = cli("inspect", src, "--target", "mnn", "--json")
    assert r.code == 0, r.err
    assert r.json["targets"]["mnn"]["unsupported"] == {}


def test_cli_locate_finds_mnn_tensors(cli, in_tmp):
    src = in_tmp / "cnn.onnx"
    onnx.save(torch_cnn(), src)
    r = cli("build", src, "--target", "mnn", "--fp16", "--json")
    assert r.code == 0, r.err
    main = r.json["artifacts"][0]
    # An impossible gate makes the artifact fail, so --locate walks its intermediate tensors.
    r = cli("verify", src, main, "--locate", "--min-cos", "1", "--json")
    assert r.code == 3
    located = r.json["report"]["results"][0]["locate"]
    assert located["found"] and located["compared"] >= 5
    # MNN computed the ONNX-named intermediate tensors (stem conv + relu, the first block).
    assert located["tensors"][0]["tensor"] == "/stem/stem.2/Relu_output_0"
    assert 0.999 < located["tensors"][0]["cosine"] < 1


# ---------------------------------------------------------------------------
# Bad input


def test_unsupported_op_is_listed_before_writing(cli, in_tmp):
    src = in_tmp / "hm.onnx"
    onnx.save(unsupported_model(), src)
    r = cli("build", src, "--target", "mnn", "-o", in_tmp / "out")
    assert_clean_error(r, EXIT_CONVERSION, "Hardmax", "hardmax_node")
    assert not (in_tmp / "out").exists()
    r = cli("inspect", src, "--target", "mnn", "--json")
    assert r.json["targets"]["mnn"]["unsupported"] == {"Hardmax": ["hardmax_node"]}


def test_converter_failure_becomes_unsupported_ops_error(tmp_path):
    """Past the op list, the converter's own refusal is parsed the same way."""
    dest = tmp_path / "x.mnn"
    with pytest.raises(UnsupportedOpsError) as ei:
        convert_onnx(unsupported_model(), dest, precision="fp32", int8_mode=None, timeout=120)
    assert ei.value.ops == {"Hardmax": ["hardmax_node"]} and ei.value.exit_code == EXIT_CONVERSION
    assert not dest.exists()


def test_bad_options_and_files(cli, in_tmp):
    src = in_tmp / "sq.onnx"
    onnx.save(light("squeezenet"), src)
    r = cli("build", src, "--target", "mnn", "--option", "int8_mode=weight")
    assert_clean_error(r, EXIT_USAGE, "int8_mode", "int8")
    np.save(in_tmp / "c.npy", image_feeds(light("squeezenet"), 1, seed=0)[0]["data_0"])
    r = cli("build", src, "--target", "mnn", "--int8", "--calib", in_tmp / "c.npy", "--option", "int8_mode=half")
    assert_clean_error(r, EXIT_USAGE, "int8_mode", "weight, full")
    assert not (in_tmp / "sq_mnn").exists()
    bad = in_tmp / "broken.mnn"
    bad.write_bytes(b"\x10\x00\x00\x00not a flatbuffer at all")
    with pytest.raises(InputError, match=r"broken\.mnn"):
        MnnTarget.recognise(bad)
    r = cli("verify", src, bad)
    assert r.code == EXIT_USAGE and "broken.mnn" in r.err and "Traceback" not in r.err
    assert MnnTarget.recognise(src) is None


def test_runner_names_missing_inputs(tmp_path):
    art = build(light("squeezenet"), tmp_path)
    with pytest.raises(InputError, match="data_0"):
        MnnRunner(art, threads=1).infer({"wrong": np.zeros((1, 3, 224, 224), np.float32)})


# ---------------------------------------------------------------------------
# No pip, no network


SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys

    _LOG = os.environ["MCONV_TEST_AUDIT_LOG"]

    def _record(line):
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {line}\\n")

    def _hook(event, args):
        if event == "import" and str(args[0]).startswith("MNN.tools"):
            _record(f"import {args[0]}")
        elif event == "socket.connect" and isinstance(args[1], tuple):
            _record(f"connect {args[1]}")
            raise OSError("network refused by the test")
        elif event == "socket.getaddrinfo":
            _record(f"getaddrinfo {args[0]}")
            raise OSError("name look-up refused by the test")
        elif event in ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn") and "pip" in repr(args):
            _record(f"{event} {args!r}"[:300])

    _record("process")
    sys.addaudithook(_hook)
    """
)


def test_build_runs_no_pip_and_reaches_no_network(mconv_proc, tmp_path):
    hooks, bin_dir = tmp_path / "hooks", tmp_path / "bin"
    hooks.mkdir()
    bin_dir.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "pip-called"
    for name in ("pip", "pip3"):
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\necho \"$0 $*\" >> '{marker}'\nexit 1\n")
        fake.chmod(0o755)
    log = tmp_path / "audit.log"
    src = tmp_path / "cnn.onnx"
    onnx.save(torch_cnn(), src)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, f in enumerate(image_feeds(torch_cnn(), 4, seed=8)):
        np.save(calib / f"{i}.npy", f["image"])
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MCONV_TEST_AUDIT_LOG": str(log),
    }
    # Full INT8 runs both compiled tools (converter, quantizer) and the runtime, each in a child.
    args = (
        "build",
        src,
        "--target",
        "mnn",
        "--int8",
        "--calib",
        calib,
        "--option",
        "int8_mode=full",
        "-o",
        tmp_path / "o",
    )
    r = mconv_proc(*args, env=env)
    assert r.code == 0, r.err
    lines = log.read_text().splitlines()
    assert not marker.exists(), marker.read_text()
    assert [ln for ln in lines if not ln.endswith(" process")] == []
    # The hook was live in mconv and in its children (converter, quantizer, runners).
    assert len({ln.split()[0] for ln in lines}) >= 4


def test_legacy_softmax_rewrite_keeps_onnx_semantics():
    from mconv.targets.mnn.legacy import flatten_legacy_softmax

    def model(op: str, axis: int, opset: int) -> onnx.ModelProto:
        node = helper.make_node(op, ["x"], ["y"], name="sm", axis=axis)
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for op in ("Softmax", "LogSoftmax"):
        m = model(op, 1, 11)
        ref = run_ort(m, {"x": x})[0]
        assert flatten_legacy_softmax(m) == 1
        np.testing.assert_allclose(run_ort(m, {"x": x})[0], ref, rtol=1e-6, atol=1e-6)
    assert flatten_legacy_softmax(model("Softmax", 2, 11)) == 0  # the last axis: already right
    assert flatten_legacy_softmax(model("Softmax", 1, 13)) == 0  # opset 13 means that axis alone


def test_qdq_activations_are_refused_before_the_converter_aborts(cli, in_tmp):
    # MNN's converter aborts (SIGABRT) on Q/DQ over activations; the refusal comes first
    # and says what to do. int8 weights behind DequantizeLinear alone convert (and are
    # right: exit 0 is after verification).
    from tests.models import qdq_conv_bn_relu_model

    q = qdq_conv_bn_relu_model()
    rng = np.random.default_rng(0)
    src = in_tmp / "q.onnx"
    onnx.save(q, src)
    r = cli("build", src, "--target", "mnn", "-o", in_tmp / "out")
    assert_clean_error(r, EXIT_CONVERSION, "QuantizeLinear", "--int8 --calib")
    assert not (in_tmp / "out").exists()
    # int8 weights behind DequantizeLinear (per output channel) at opset 13, and a
    # dequantized BatchNormalization scale, which MNN's converter itself reads wrongly.
    w = rng.integers(-127, 128, size=(8, 3, 3, 3)).astype(np.int8)
    ws = (rng.random(8) * 0.02 + 0.005).astype(np.float32)
    gamma = rng.integers(40, 128, size=8).astype(np.int8)
    ini = {"w": w, "s": ws, "z": np.zeros(8, np.int8), "g": gamma, "gs": np.float32(0.01),
           "beta": rng.standard_normal(8).astype(np.float32), "mean": np.zeros(8, np.float32),
           "var": np.ones(8, np.float32)}  # fmt: skip
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0),
         helper.make_node("Conv", ["x", "wf"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("DequantizeLinear", ["g", "gs"], ["gf"]),
         helper.make_node("BatchNormalization", ["c", "gf", "beta", "mean", "var"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"])],
        "w8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [onnx.numpy_helper.from_array(v, k) for k, v in ini.items()],
    )  # fmt: skip
    src2 = in_tmp / "w8.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), src2)
    r = cli("build", src2, "--target", "mnn", "-o", in_tmp / "out2")
    assert r.code == 0, r.err
    assert (in_tmp / "out2" / "w8.mnn").is_file()
