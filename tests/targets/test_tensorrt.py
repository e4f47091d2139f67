"""TensorRT target: preflight, option parsing, the missing-TensorRT path and engine
metadata run everywhere; engine builds are marked ``gpu`` and skipped with the reason
where TensorRT or a CUDA GPU is absent."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mconv.errors import ConversionError, MissingDependencyError, UsageError
from mconv.limits import parse_size
from mconv.specs import ShapeProfile, parse_profile
from mconv.targets import get_target
from mconv.targets.base import BuildOptions
from mconv.targets.tensorrt import (
    EngineConfig,
    TensorRTTarget,
    check_engine_compat,
    compare_metadata,
    engine_config,
    parse_trtexec_version,
    runtime_missing_reason,
    sidecar_path,
    trtexec_command,
)
from mconv.targets.tensorrt.support import load_table, normalize_profiles, preflight_report

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_qdq import samples, tiny_convnet


def graph(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def codes(findings, severity=None):
    return {f.code for f in findings if severity is None or f.severity == severity}


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    return tiny_convnet(str(tmp_path_factory.mktemp("trt") / "net.onnx"))


@pytest.fixture(scope="module")
def dynamic_convnet(tmp_path_factory):
    return tiny_convnet(str(tmp_path_factory.mktemp("trt") / "dyn.onnx"), dynamic=True)


def opts(precision="fp32", shapes=(), calib=None, **values) -> BuildOptions:
    if shapes:
        values["profiles"] = [[parse_profile(s) for s in group] for group in shapes]
    return BuildOptions(precision, calib, TensorRTTarget().make_options(values, precision=precision))


# ---------------------------------------------------------------- registry and table


def test_registered_as_trt_and_tensorrt():
    assert isinstance(get_target("trt"), TensorRTTarget)
    assert isinstance(get_target("tensorrt"), TensorRTTarget)
    assert TensorRTTarget.aliases == ()


def test_op_table_records_its_source():
    table = load_table()
    src = table["source"]
    assert src["repository"].endswith("onnx/onnx-tensorrt")
    assert src["file"] == "docs/operators.md"
    assert len(src["commit"]) == 40 and src["tensorrt"].startswith("10.")
    ops = table["ops"]
    assert ops["Conv"]["supported"] and not ops["Unique"]["supported"]
    assert "initializer" in ops["ReduceMean"]["restrictions"]
    assert len(ops) > 180


# ---------------------------------------------------------------- preflight


def test_convnet_has_no_blocking_finding(convnet):
    findings = preflight_report(convnet, opts())
    assert not [f for f in findings if f.blocking]
    assert TensorRTTarget().preflight(convnet, opts()) == []
    json.dumps([f.to_json() for f in findings])


def test_unsupported_op_is_reported_with_node_names():
    m = graph([helper.make_node("Unique", ["x"], ["y"], name="uniq0")], [vi("x", [4])], [vi("y", None)])
    f = next(f for f in preflight_report(m) if f.code == "unsupported-op")
    assert f.severity == "error" and f.nodes == ["uniq0"] and "Unique" in f.message
    with pytest.raises(ConversionError, match="uniq0"):
        TensorRTTarget().preflight(m, opts())


def test_custom_domain_op_needs_a_plugin():
    node = helper.make_node("MyOp", ["x"], ["y"], name="custom", domain="com.acme")
    m = graph([node], [vi("x", [1, 4])], [vi("y", [1, 4])])
    m.opset_import.append(helper.make_opsetid("com.acme", 1))
    f = next(f for f in preflight_report(m) if f.code == "needs-plugin")
    assert f.severity == "error" and f.nodes == ["custom"] and "'MyOp'" in f.message


def test_roialign_uses_a_shipped_plugin():
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], name="roi")
    m = graph([node], [vi("x", [1, 4, 8, 8]), vi("rois", [2, 4]), vi("idx", [2], TensorProto.INT64)], [vi("y", None)])
    f = next(f for f in preflight_report(m) if f.code == "needs-plugin")
    assert f.severity == "warning" and "ROIAlign_TRT" in f.message and f.nodes == ["roi"]


def test_unsupported_op_inside_an_if_branch_is_found():
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner")], "then", [], [vi("u", None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["v"], name="id")], "else", [], [vi("v", None)])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=branch, else_branch=other)
    m = graph([node], [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi("y", None)])
    f = next(f for f in preflight_report(m) if f.code == "unsupported-op")
    assert f.nodes == ["branch/then_branch/inner"]


def test_computed_reduce_axes_break_a_restriction():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("ReduceMean", ["x", "s"], ["y"], name="mean"),
    ]
    m = graph(nodes, [vi("x", [2, 3])], [vi("y", None)], opset=18)
    f = next(f for f in preflight_report(m) if f.code == "op-restriction")
    assert f.nodes == ["mean"] and "axes" in f.message


def test_constant_reduce_axes_pass():
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    m = graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")],
        [vi("x", [2, 3])],
        [vi("y", None)],
        [axes],
        opset=18,
    )
    assert "op-restriction" not in codes(preflight_report(m))


def test_maxpool_indices_and_cubic_resize_are_rejected():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Resize", ["p", "", "sc"], ["y"], name="up", mode="cubic"),
    ]
    sc = helper.make_tensor("sc", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    m = graph(nodes, [vi("x", [1, 1, 4, 4])], [vi("y", None), vi("idx", None, TensorProto.INT64)], [sc])
    found = {tuple(f.nodes) for f in preflight_report(m) if f.code == "op-restriction"}
    assert found == {("pool",), ("up",)}


def test_int64_initializers_are_listed_and_out_of_range_ones_warned():
    big = helper.make_tensor("big", TensorProto.INT64, [1], [2**40])
    end = helper.make_tensor("end", TensorProto.INT64, [1], [2**63 - 1])
    nodes = [
        helper.make_node("Add", ["x", "big"], ["y"], name="add"),
        helper.make_node("Add", ["x", "end"], ["z"], name="add2"),
    ]
    m = graph(
        nodes,
        [vi("x", [1], TensorProto.INT64)],
        [vi("y", [1], TensorProto.INT64), vi("z", [1], TensorProto.INT64)],
        [big, end],
    )
    found = [f for f in preflight_report(m) if f.code == "int64-initializers"]
    info = next(f for f in found if f.severity == "info")
    warn = next(f for f in found if f.severity == "warning")
    assert sorted(info.nodes) == ["big", "end"]
    assert warn.nodes == ["big"]  # INT64 max is Slice's "to the end" and clamps harmlessly


def test_nonzero_zero_point_and_int32_bias_dequantize_are_rejected():
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("zp", TensorProto.INT8, [], [3]),
        helper.make_tensor("b", TensorProto.INT32, [2], [1, 2]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["b", "s"], ["bf"], name="dqb"),
    ]
    m = graph(nodes, [vi("x", [2])], [vi("q", None), vi("bf", None)], inits)
    found = {f.nodes[0]: f.message for f in preflight_report(m) if f.code == "op-restriction"}
    assert "zero point" in found["q"] and "INT32" in found["dqb"]


# ---------------------------------------------------------------- shape profiles


def test_dynamic_input_without_profile_names_the_input(dynamic_convnet):
    f = next(f for f in preflight_report(dynamic_convnet, opts()) if f.code == "no-profile")
    assert f.nodes == ["input"] and "--shape input:" in f.message
    with pytest.raises(UsageError, match="'input'") as e:
        TensorRTTarget().preflight(dynamic_convnet, opts())
    assert e.value.exit_code == 2


def test_one_profile_from_shape_flags(dynamic_convnet):
    o = opts(shapes=[["input:1x3x32x32:4x3x32x32:8x3x32x32"]])
    assert TensorRTTarget().preflight(dynamic_convnet, o) == []
    cfg = engine_config(o)
    assert cfg.profiles == [[ShapeProfile("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))]]
    assert cfg.profiles_json()[0][0]["max"] == [8, 3, 32, 32]


def test_several_profiles(dynamic_convnet):
    o = opts(shapes=[["input:1x3x32x32:1x3x32x32:4x3x32x32"], ["input:8x3x32x32:16x3x32x32:32x3x32x32"]])
    assert TensorRTTarget().preflight(dynamic_convnet, o) == []
    assert [p[0].opt[0] for p in engine_config(o).profiles] == [1, 16]


def test_profile_normalisation_accepts_flat_lists_and_strings():
    p = parse_profile("x:1x2:2x2:4x2")
    assert normalize_profiles([p]) == [[p]]
    assert normalize_profiles(["x:1x2:2x2:4x2"]) == [[p]]
    assert normalize_profiles([[p], [p]]) == [[p], [p]]
    assert normalize_profiles(None) == []


def test_profile_missing_from_second_profile(dynamic_convnet):
    o = opts(shapes=[["input:1x3x32x32:1x3x32x32:4x3x32x32"], []])
    o.target.profiles.append([ShapeProfile("other", (1,), (1,), (1,))])
    with pytest.raises(UsageError) as e:
        TensorRTTarget().preflight(dynamic_convnet, o)
    assert "profile 1" in str(e.value) and "'other'" in str(e.value) and "'input'" in str(e.value)


def test_profile_that_varies_a_static_axis(dynamic_convnet):
    o = opts(shapes=[["input:1x3x32x32:1x3x64x64:1x3x64x64"]])
    with pytest.raises(UsageError, match="axis 2, which is fixed at 32"):
        TensorRTTarget().preflight(dynamic_convnet, o)


def test_profile_rank_mismatch(dynamic_convnet):
    with pytest.raises(UsageError, match="rank 2"):
        TensorRTTarget().preflight(dynamic_convnet, opts(shapes=[["input:1x3:1x3:2x3"]]))


@pytest.mark.parametrize("text", ["input:1x3:2x3", "input:4x3:2x3:8x3", "input:1x3:1x3x1:2x3"])
def test_bad_shape_flags_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shape"):
        parse_profile(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * 2**20),
        ("2G", 2 * 2**30),
        ("1.5GiB", int(1.5 * 2**30)),
        ("1048576", 2**20),
    ],
)
def test_workspace_sizes(text, expected):
    assert parse_size(text, "--workspace") == expected
    assert engine_config(opts(workspace=text)).workspace == expected
    assert engine_config(opts(workspace=expected)).workspace == expected


def test_bad_workspace_is_a_usage_error():
    with pytest.raises(UsageError, match="--workspace"):
        engine_config(opts(workspace="lots"))
    with pytest.raises(UsageError, match="--workspace"):
        engine_config(opts(workspace=0))


def test_timing_cache_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--timing-cache"):
        engine_config(opts(timing_cache=str(tmp_path)))


def test_trtexec_command_carries_the_same_options(tmp_path):
    cfg = EngineConfig("int8", normalize_profiles(["input:1x3x32x32:4x3x32x32:8x3x32x32"]), 2**30, tmp_path / "t.cache")
    cmd = trtexec_command("trtexec", tmp_path / "m.onnx", tmp_path / "m.engine", cfg)
    assert f"--onnx={tmp_path / 'm.onnx'}" in cmd and f"--saveEngine={tmp_path / 'm.engine'}" in cmd
    assert {"--fp16", "--int8", "--memPoolSize=workspace:1024", "--skipInference"} <= set(cmd)
    assert "--minShapes=input:1x3x32x32" in cmd and "--maxShapes=input:8x3x32x32" in cmd
    assert f"--timingCacheFile={tmp_path / 't.cache'}" in cmd
    fp32 = trtexec_command("trtexec", tmp_path / "m.onnx", tmp_path / "e", EngineConfig())
    assert "--noTF32" in fp32 and "--fp16" not in fp32
    two = EngineConfig(profiles=[cfg.profiles[0], cfg.profiles[0]])
    with pytest.raises(UsageError, match="profiles"):
        trtexec_command("trtexec", tmp_path / "m.onnx", tmp_path / "e", two)


def test_trtexec_version_banner():
    assert parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601]") == "8.6.1"
    assert parse_trtexec_version("[TensorRT v100100] # trtexec") == "10.1.0"
    assert parse_trtexec_version("no banner") is None


# ---------------------------------------------------------------- missing TensorRT


def test_missing_tensorrt_stops_after_preflight(convnet, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setenv("PATH", str(tmp_path))  # and no trtexec
    target = TensorRTTarget()
    assert "tensorrt" in runtime_missing_reason()
    assert target.runtime_missing() is not None
    with pytest.raises(MissingDependencyError) as e:
        target.write(convnet, tmp_path / "out", "net", opts("fp16"))
    assert e.value.exit_code == 1
    assert "pip install 'mconv[tensorrt]'" in str(e.value) and "trtexec" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_tensorrt_reports_preflight_problems_first(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    m = graph([helper.make_node("Unique", ["x"], ["y"], name="uniq0")], [vi("x", [4])], [vi("y", None)])
    with pytest.raises(ConversionError, match="uniq0") as e:
        TensorRTTarget().write(m, tmp_path / "out", "m", opts())
    assert not isinstance(e.value, MissingDependencyError)


def test_runner_without_tensorrt_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    runner = TensorRTTarget().runner(TensorRTTarget.recognise(engine))
    with pytest.raises(MissingDependencyError, match="pip install"):
        runner.load()


# ---------------------------------------------------------------- engine metadata


BUILT = {
    "format": "mconv-tensorrt-engine",
    "tensorrt": "10.1.0.27",
    "gpu": {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"},
}


def test_same_version_and_gpu_is_compatible():
    assert compare_metadata(BUILT, {"tensorrt": "10.1.0.27", "gpu": dict(BUILT["gpu"])}) == ([], [])


def test_other_tensorrt_version_is_a_clear_error(tmp_path):
    here = {"tensorrt": "10.3.0.26", "gpu": dict(BUILT["gpu"])}
    errors, _ = compare_metadata(BUILT, here)
    assert len(errors) == 1 and "10.1.0.27" in errors[0] and "10.3.0.26" in errors[0]
    with pytest.raises(ConversionError, match="rebuild it here") as e:
        check_engine_compat(BUILT, here, tmp_path / "m.engine")
    assert "m.engine" in str(e.value) and "version tag" not in str(e.value)


def test_build_number_alone_does_not_matter():
    assert compare_metadata(BUILT, {"tensorrt": "10.1.0.99", "gpu": dict(BUILT["gpu"])})[0] == []


def test_version_compatible_engine_loads_in_newer_same_major():
    built = {**BUILT, "version_compatible": True}
    assert compare_metadata(built, {"tensorrt": "10.4.0", "gpu": BUILT["gpu"]})[0] == []
    assert compare_metadata(built, {"tensorrt": "10.0.1", "gpu": BUILT["gpu"]})[0]


def test_other_gpu_generation_is_a_clear_error():
    here = {"tensorrt": "10.1.0.27", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}}
    errors, _ = compare_metadata(BUILT, here)
    assert len(errors) == 1 and "compute capability 8.0" in errors[0] and "NVIDIA H100" in errors[0]


def test_same_generation_other_card_is_a_warning():
    here = {"tensorrt": "10.1.0.27", "gpu": {"name": "NVIDIA A30", "compute_capability": "8.0"}}
    errors, warnings = compare_metadata(BUILT, here)
    assert errors == [] and "NVIDIA A30" in warnings[0]


def test_missing_metadata_is_a_warning(tmp_path):
    assert "cannot be checked" in check_engine_compat(None, {}, tmp_path / "x.engine")[0]
    errors, warnings = compare_metadata({"format": "mconv-tensorrt-engine"}, BUILT)
    assert errors == [] and len(warnings) == 2


def test_recognise_engine_and_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    bare = TensorRTTarget.recognise(engine)
    assert bare is not None and bare.meta == {} and bare.files == [engine]
    sidecar_path(engine).write_text(json.dumps({**BUILT, "precision": "fp16"}))
    art = TensorRTTarget.recognise(sidecar_path(engine))
    assert art.main == engine and art.precision == "fp16" and len(art.files) == 2
    other = tmp_path / "m.onnx"
    other.write_bytes(b"x")
    assert TensorRTTarget.recognise(other) is None


# ---------------------------------------------------------------- on a GPU


def _needs_gpu() -> None:
    reason = runtime_missing_reason()
    if reason:
        pytest.skip(f"TensorRT engine build needs tensorrt and a CUDA GPU: {reason}")


def _ort(model, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds), strict=True))


def _cos(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "min_cos"), [("fp32", 0.99999), ("fp16", 0.9999), ("int8", 0.99)])
def test_build_and_run_engine(convnet, tmp_path, precision, min_cos):
    _needs_gpu()
    calib = samples("input", (1, 3, 32, 32), 16, seed=0) if precision == "int8" else None
    target = TensorRTTarget()
    art = target.write(convnet, tmp_path, "net", opts(precision, calib=calib, workspace=2**28))
    assert art.main == tmp_path / "net.engine" and art.main.stat().st_size > 0
    meta = json.loads(sidecar_path(art.main).read_text())
    assert meta["precision"] == precision and meta["tensorrt"] and meta["gpu"]["compute_capability"]
    runner = target.runner(art)
    runner.load()
    for feeds in samples("input", (1, 3, 32, 32), 3, seed=5):
        got = runner.infer(feeds)["logits"]
        ref = _ort(convnet, feeds)["logits"]
        assert got.shape == ref.shape and _cos(got, ref) >= min_cos
        if precision == "fp32":
            assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6


@pytest.mark.gpu
def test_two_profiles_and_timing_cache(dynamic_convnet, tmp_path):
    _needs_gpu()
    cache = tmp_path / "timing.cache"
    o = opts(
        shapes=[["input:1x3x32x32:1x3x32x32:2x3x32x32"], ["input:4x3x32x32:8x3x32x32:8x3x32x32"]],
        timing_cache=str(cache),
    )
    target = TensorRTTarget()
    art = target.write(dynamic_convnet, tmp_path / "a", "dyn", o)
    assert cache.is_file() and cache.stat().st_size > 0
    assert len(json.loads(sidecar_path(art.main).read_text())["profiles"]) == 2
    runner = target.runner(art)
    runner.load()
    for batch in (2, 8):
        feeds = samples("input", (batch, 3, 32, 32), 1, seed=batch)[0]
        got = runner.infer(feeds)["logits"]
        assert got.shape == (batch, 10)
        assert _cos(got, _ort(dynamic_convnet, feeds)["logits"]) >= 0.99999
    target.write(dynamic_convnet, tmp_path / "b", "dyn", o)  # reads the cache it wrote


@pytest.mark.gpu
def test_engine_from_another_tensorrt_is_refused_before_loading(convnet, tmp_path):
    _needs_gpu()
    art = TensorRTTarget().write(convnet, tmp_path, "net", opts())
    side = sidecar_path(art.main)
    meta = json.loads(side.read_text())
    meta["tensorrt"] = "7.0.0"
    side.write_text(json.dumps(meta))
    runner = TensorRTTarget().runner(TensorRTTarget.recognise(art.main))
    with pytest.raises(ConversionError, match=r"built with TensorRT 7\.0\.0"):
        runner.load()


@pytest.mark.gpu
def test_parser_error_names_the_node(tmp_path):
    _needs_gpu()
    m = graph([helper.make_node("Unique", ["x"], ["y"], name="uniq0")], [vi("x", [4])], [vi("y", None)])
    from mconv.targets.tensorrt import build_with_python

    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    with pytest.raises(ConversionError, match="uniq0"):
        build_with_python(path, m, tmp_path / "m.engine", EngineConfig())


@pytest.mark.gpu
def test_trtexec_fallback_builds_the_same_engine(convnet, tmp_path):
    _needs_gpu()
    if shutil.which("trtexec") is None:
        pytest.skip("trtexec is not on PATH")
    from mconv.targets.tensorrt import build_with_trtexec

    path = tmp_path / "m.onnx"
    onnx.save(convnet, path)
    facts = build_with_trtexec(
        shutil.which("trtexec"), path, tmp_path / "m.engine", EngineConfig("fp16", workspace=2**28)
    )
    assert (tmp_path / "m.engine").stat().st_size > 0 and facts["tensorrt"]
