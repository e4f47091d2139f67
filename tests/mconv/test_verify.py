"""``mconv verify``: real artifacts from the onnx, openvino and ncnn targets, corrupted
weights caught and located, runners that crash or hang, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.targets.base import Artifact, Runner, Target
from tests.conftest import assert_clean_error
from tests.models import make_graph_model

# ---------------------------------------------------------------------------
# Test model and artifacts


def chain_model(size: int = 16, seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """conv1 -> relu1 -> conv2 -> relu2 -> conv3 -> GlobalAveragePool -> Flatten: 10 class scores."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        scale = np.sqrt(2.0 / np.prod(shape[1:])) if len(shape) > 1 else 0.1
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("conv1.weight", (8, 3, 3, 3)),
        init("conv1.bias", (8,)),
        init("conv2.weight", (8, 8, 3, 3)),
        init("conv2.bias", (8,)),
        init("conv3.weight", (10, 8, 1, 1)),
        init("conv3.bias", (10,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "conv3.weight", "conv3.bias"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["logits"], name="flatten"),
    ]
    return make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )


def build(src: Path, target: str, out: Path, *extra: str) -> Path:
    """``mconv build`` in this process; returns the artifact's main file."""
    from mconv.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as report:  # keep the caller's captured output clean
        code = main(["build", str(src), "--target", target, "-o", str(out), "--json", *extra])
    assert code == 0, report.getvalue()
    suffix = {"onnx": ".onnx", "openvino": ".xml", "ncnn": ".param"}[target]
    return out / f"{src.stem}{suffix}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The chain model and its fp32 artifacts from the three real CPU targets."""
    d = tmp_path_factory.mktemp("verify")
    src = d / "chain.onnx"
    onnx.save(chain_model(), str(src))
    arts = {"src": src}
    for t in ("onnx", "openvino", "ncnn"):
        arts[t] = build(src, t, d / f"chain_{t}")
    return arts


def copy_artifact(main: Path, dest: Path) -> Path:
    """Copy an artifact's folder so that a test can damage it."""
    shutil.copytree(main.parent, dest)
    return dest / main.name


# ---------------------------------------------------------------------------
# Corrupting weights on disk, one way per format


def scale_onnx_initializer(path: Path, name: str, factor: float) -> None:
    m = onnx.load(str(path))
    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            arr = numpy_helper.to_array(t) * factor
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
            break
    else:
        raise AssertionError(f"no initializer {name}")
    onnx.save(m, str(path))


def scale_bin_range(path: Path, offset: int, count: int, factor: float) -> None:
    data = bytearray(path.read_bytes())
    end = offset + 4 * count
    arr = np.frombuffer(bytes(data[offset:end]), np.float32) * factor
    data[offset:end] = arr.astype(np.float32).tobytes()
    path.write_bytes(bytes(data))


def scale_openvino_const(xml: Path, const_name: str, factor: float) -> None:
    """Scale the f32 values of a Const layer in the .bin, at the offset the .xml gives."""
    layer = next(
        x for x in ET.parse(xml).getroot().iter("layer") if x.get("type") == "Const" and x.get("name") == const_name
    )
    data = layer.find("data")
    assert data.get("element_type") == "f32"
    scale_bin_range(xml.with_suffix(".bin"), int(data.get("offset")), int(data.get("size")) // 4, factor)


def scale_ncnn_conv_weights(param: Path, layer_name: str, factor: float) -> None:
    """Scale a Convolution's fp32 weights in the .bin: layers store, in order, a 4-byte
    format tag, ``weight_data_size`` (6=) floats, then ``num_output`` (0=) bias floats."""
    offset = 0
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if parts[0] != "Convolution":
            assert parts[0] in ("Input", "ReLU", "Reshape", "Pooling", "Split"), parts[0]  # weightless
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        kv = dict(p.split("=") for p in parts[4 + n_in + n_out :])
        n_weights = int(kv["6"])
        if parts[1] == layer_name:
            scale_bin_range(param.with_suffix(".bin"), offset + 4, n_weights, factor)
            return
        offset += 4 + 4 * n_weights + (4 * int(kv["0"]) if kv.get("5") == "1" else 0)
    raise AssertionError(f"no Convolution {layer_name}")


CORRUPT = {
    "onnx": lambda p: scale_onnx_initializer(p, "conv2.weight", -3.0),
    "openvino": lambda p: scale_openvino_const(p, "conv2.weight", -3.0),
    "ncnn": lambda p: scale_ncnn_conv_weights(p, "conv2", -3.0),
}


# ---------------------------------------------------------------------------
# Test-double targets: runners that crash natively, hang, or lack their runtime


class _DoubleRunner(Runner):
    def load(self) -> None:
        pass

    def input_names(self) -> list[str]:
        return ["x"]

    def output_names(self) -> list[str]:
        return ["logits"]

    def infer_impl(self, feeds):
        mode = self.artifact.main.read_text().strip()
        if mode == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if mode == "hang":
            time.sleep(120)
        return {"logits": np.zeros((1, 10), np.float32)}


class DoubleTarget(Target):
    """Recognises ``*.double`` files; their text says how the runner misbehaves."""

    name = "double"
    extra = "double"
    isolate = True

    def write(self, model, out_dir, stem, options):
        raise NotImplementedError

    def runner(self, artifact, *, threads=None):
        return _DoubleRunner(artifact, threads=threads)

    @classmethod
    def recognise(cls, path: Path):
        if path.suffix != ".double":
            return None
        return Artifact(cls.name, path, [path], "fp32", {"inputs": [{"name": "x", "shape": [1, 3, 16, 16]}]})


class NoRuntimeTarget(DoubleTarget):
    name = "noruntime"
    extra = "noruntime"

    def runtime_missing(self) -> str | None:
        return "the noruntime package is not installed"

    @classmethod
    def recognise(cls, path: Path):
        return Artifact(cls.name, path, [path]) if path.suffix == ".nort" else None


@pytest.fixture
def doubles():
    from mconv.targets import register, unregister

    register(DoubleTarget)
    register(NoRuntimeTarget)
    yield
    unregister(DoubleTarget.name)
    unregister(NoRuntimeTarget.name)


def double_file(d: Path, name: str, mode: str) -> Path:
    p = d / f"{name}.double"
    p.write_text(mode)
    return p


# ---------------------------------------------------------------------------
# Real artifacts


def test_all_real_targets_pass_with_metrics_per_output(cli, built):
    r = cli("verify", built["src"], built["onnx"], built["openvino"], built["ncnn"], "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["passed"] is True and rep["samples"] == 2 and rep["inputs"] == "random (seed 0)"
    assert [x["target"] for x in rep["results"]] == ["onnx", "openvino", "ncnn"]
    for row in rep["results"]:
        assert row["status"] == "passed" and row["tolerance"] == "rel<=max(0.0001, 20x floor)"
        (out,) = row["outputs"]
        assert out["name"] == "logits" and out["shape"] == [1, 10]
        assert out["rel"] <= 1e-4 and out["max_abs"] <= 1e-4 * out["ref_max"]
        assert out["mean_abs"] <= out["max_abs"]
        assert out["cosine"] > 0.99999
        assert out["top1"] == 1.0 and out["top5"] == 1.0  # class scores: top-k agreement
        # verify measures the rounding floor for every FP32 output, passing or not
        assert 0 < out["floor"] < 1e-5 and out["ratio"] == pytest.approx(out["rel"] / out["floor"])
        assert out["rule"] == "elementwise"


def test_table_lists_every_artifact(cli, built):
    r = cli("verify", built["src"], built["onnx"], built["ncnn"])
    assert r.code == 0, r.err
    for col in ("max abs", "rel", "mean abs", "cosine", "top-1", "top-5"):
        assert col in r.out
    assert "chain.onnx" in r.out and "chain.param" in r.out and r.out.count("ok (rel<=max(0.0001, 20x floor))") == 2


@pytest.mark.parametrize("target", ["onnx", "openvino", "ncnn"])
def test_corrupted_weights_fail_and_locate_names_the_layer(cli, built, tmp_path, target):
    art = copy_artifact(built[target], tmp_path / "broken")
    CORRUPT[target](art)
    r = cli("verify", built["src"], art, "--locate", "--json")
    assert r.code == 3, r.err
    assert "conv2 (Conv)" in r.err.strip().splitlines()[-1]
    (row,) = r.json["report"]["results"]
    assert row["status"] == "failed" and row["outputs"][0]["rel"] > 1e-2
    loc = row["locate"]
    assert loc["found"] is True
    if target == "ncnn":  # conv2+relu2 are one ncnn layer: c2 is fused away, r2 is compared
        assert (loc["node"], loc["op_type"], loc["tensor"]) == ("conv2", "Conv", "r2")
        assert loc["span"] == ["conv2 (Conv)", "relu2 (Relu)"]
    else:
        assert (loc["node"], loc["op_type"], loc["tensor"]) == ("conv2", "Conv", "c2")
    assert loc["before"]["tensor"] == "r1" and loc["before"]["rel"] <= 1e-4  # exact up to conv2's input
    # weights * -3: negative cosine on the conv output; after the fused relu, none left
    assert loc["after"]["rel"] > 1.0 and loc["after"]["cosine"] < (0.5 if target == "ncnn" else 0)
    expected = ["r1", "r2"] if target == "ncnn" else ["c1", "r1", "c2"]  # source topological order
    assert [t["tensor"] for t in loc["tensors"]][: len(expected)] == expected


def test_locate_prints_the_first_diverging_node(cli, built, tmp_path):
    art = copy_artifact(built["onnx"], tmp_path / "broken")
    CORRUPT["onnx"](art)
    r = cli("verify", built["src"], art, "--locate")
    assert_clean_error(r, 3, "chain.onnx (onnx): failed", "first divergence at conv2 (Conv)")
    assert "first divergence at node 'conv2' (Conv), output 'c2'" in r.out
    assert "FAIL rel" in r.out


def test_build_and_verify_share_metrics(cli, built, tmp_path):
    b = cli("build", built["src"], "--target", "onnx", "-o", tmp_path / "b", "--json")
    v = cli("verify", built["src"], tmp_path / "b" / "chain.onnx", "--json")
    assert b.code == 0 and v.code == 0
    built_metrics = b.json["verification"]["outputs"][0]
    verified = v.json["results"][0]["outputs"][0]
    for k in ("max_abs", "rel", "mean_abs", "cosine", "top1", "top5"):
        assert built_metrics[k] == verified[k], k


def test_fp16_artifact_uses_the_fp16_tolerance(cli, built, tmp_path):
    art = build(built["src"], "onnx", tmp_path / "h", "--fp16")
    r = cli("verify", built["src"], art, "--json")
    assert r.code == 0, r.err
    row = r.json["results"][0]
    assert row["precision"] == "fp16" and row["tolerance"] == "cos>=0.9999"
    assert row["outputs"][0]["cosine"] >= 0.9999
    # An explicit tolerance overrides the precision's: fp16 rounding misses rel 1e-7.
    r = cli("verify", built["src"], art, "--rtol", "1e-7", "--json")
    assert r.code == 3 and "rel<=1e-07" in r.json["report"]["results"][0]["tolerance"]


def test_inputs_from_npz_samples(cli, built, tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        np.savez(tmp_path / f"s{i}.npz", x=rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    r = cli("verify", built["src"], built["openvino"], "--inputs", tmp_path, "--samples", "3", "--json")
    assert r.code == 0, r.err
    assert r.json["samples"] == 3 and r.json["inputs"] == str(tmp_path)


def test_image_inputs_take_mean_std_and_size(cli, built, tmp_path):
    pil = pytest.importorskip("PIL.Image", reason="Pillow reads image samples")
    rng = np.random.default_rng(2)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        pil.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    args = ("verify", built["src"], built["openvino"], "--inputs", imgs, "--json")
    r = cli(*args, "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--size", "16x16")
    assert r.code == 0, r.err
    assert r.json["samples"] == 2
    assert r.json["inputs"].endswith("(for images: mean 0.485,0.456,0.406, std 0.229,0.224,0.225, size 16x16)")
    assert_clean_error(cli(*args, "--mean", "half"), 2, "--mean")
    assert_clean_error(cli(*args, "--size", "16"), 2, "--size")


# ---------------------------------------------------------------------------
# Crashes, hangs, missing runtimes


def test_crashing_and_hanging_runners_fail_their_rows_only(cli, built, tmp_path, doubles):
    segv = double_file(tmp_path, "segv", "segv")
    hang = double_file(tmp_path, "hang", "hang")
    r = cli("verify", built["src"], segv, built["onnx"], hang, built["ncnn"], "--timeout", "3", "--json")
    assert r.code == 3
    rows = {Path(x["path"]).name: x for x in r.json["report"]["results"]}
    assert rows["segv.double"]["status"] == "crashed"
    assert "crashed natively (SIGSEGV)" in rows["segv.double"]["error"]
    assert rows["hang.double"]["status"] == "timeout"
    assert "timed out after 3 s" in rows["hang.double"]["error"]
    assert rows["chain.onnx"]["status"] == "passed" and rows["chain.param"]["status"] == "passed"
    assert "segv.double (double): crashed" in r.err and "2 more artifact(s) failed" not in r.err


def test_missing_runtime_row_names_the_extra(cli, built, tmp_path, doubles):
    nort = tmp_path / "m.nort"
    nort.write_text("")
    r = cli("verify", built["src"], nort, built["onnx"])
    assert_clean_error(r, 1, "m.nort (noruntime)", "pip install 'mconv[noruntime]'")
    assert "no-runtime" in r.out and "ok (rel<=max(0.0001, 20x floor))" in r.out  # the ONNX artifact still ran
    r = cli("verify", built["src"], nort, built["onnx"], "--json")
    rows = r.json["report"]["results"]
    assert rows[0]["status"] == "no-runtime" and "pip install 'mconv[noruntime]'" in rows[0]["error"]
    assert rows[1]["status"] == "passed"


def test_locate_on_an_unsupported_target_says_so(cli, built, tmp_path, doubles):
    zeros = double_file(tmp_path, "zeros", "zeros")
    r = cli("verify", built["src"], zeros, "--locate", "--json")
    assert r.code == 3
    loc = r.json["report"]["results"][0]["locate"]
    assert loc["found"] is False and "--locate is not supported for double artifacts" in loc["error"]


# ---------------------------------------------------------------------------
# Bad input


def test_param_without_bin_is_an_input_error(cli, built, tmp_path):
    art = copy_artifact(built["ncnn"], tmp_path / "n")
    art.with_suffix(".bin").unlink()
    assert_clean_error(cli("verify", built["src"], art), 2, str(art), "chain.bin")


def test_xml_without_bin_is_an_input_error(cli, built, tmp_path):
    art = copy_artifact(built["openvino"], tmp_path / "o")
    art.with_suffix(".bin").unlink()
    assert_clean_error(cli("verify", built["src"], art), 2, str(art), "chain.bin")


def test_unrecognised_artifact_is_an_input_error(cli, built, tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\x00" * 64)
    # The kinds listed come from each registered target's own declaration.
    kinds = ("ncnn .param (+ .bin)", "ONNX .onnx", "OpenVINO .xml (+ .bin)", "TensorRT .engine")
    assert_clean_error(cli("verify", built["src"], junk), 2, str(junk), "not an artifact mconv recognises", *kinds)
    assert_clean_error(cli("verify", built["src"], tmp_path / "nope.onnx"), 2, "nope.onnx: no such file")


def test_artifact_with_other_input_shape_is_an_input_error(cli, built, tmp_path):
    other = tmp_path / "chain.onnx"
    onnx.save(chain_model(size=32), str(other))
    art = build(other, "onnx", tmp_path / "big")
    r = cli("verify", built["src"], art, built["onnx"])
    assert_clean_error(r, 2, str(art), "input 'x' has shape 1x3x32x32, the samples 1x3x16x16")


def test_inputs_that_do_not_fit_the_source(cli, built, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 3, 8, 8), np.float32))
    assert_clean_error(cli("verify", built["src"], built["onnx"], "--inputs", bad), 2, str(bad), "does not fit")


def test_json_failure_is_one_object(cli, built, tmp_path):
    art = copy_artifact(built["openvino"], tmp_path / "o")
    CORRUPT["openvino"](art)
    r = cli("verify", built["src"], art, "--json")
    obj = json.loads(r.out)
    assert obj["ok"] is False and obj["exit_code"] == 3 and obj["report"]["results"][0]["status"] == "failed"


def test_pytorch_source_is_exported_then_compared(cli, tmp_path):
    from tests.models import save_torchscript_cnn

    ts = save_torchscript_cnn(tmp_path / "cnn.pt")
    art = build(ts, "openvino", tmp_path / "cnn_openvino", "--input", "x:1x3x32x32")
    r = cli("verify", ts, art, "--input", "x:1x3x32x32", "--json")
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "torch"
    (out,) = r.json["results"][0]["outputs"]
    assert out["shape"] == [1, 10] and out["rel"] <= 1e-4 and out["top1"] == 1.0
