"""TVM target: real graphs compiled by TVM (relax ONNX frontend, LLVM), run by TVM's Relax
VM, compared with onnxruntime on the source ONNX at the project tolerances.

Models: the light squeezenet shipped in the onnx package (weights folded and re-drawn
from a seed, see tests/models.py), a torch-exported ResNet-style CNN with a dynamic batch
axis, a tiny ViT block (attention) and a tiny MLP. Untuned TVM compiles each in about a
second. The tuning test runs MetaSchedule for real (2 trials): importing MetaSchedule's
tensor intrinsics alone costs ~30 s of CPU, so it is marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.errors import UsageError
from mconv.targets import BuildOptions, get_target
from tests.conftest import assert_clean_error
from tests.models import conv_bn_relu_model, custom_op_model, make_graph_model, randomized_light_model, run_ort

pytest.importorskip("tvm")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Tuning records of these tests go to their own folder, never to ~/.cache."""
    monkeypatch.setenv("MCONV_CACHE", str(tmp_path / "cache"))


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def torch_cnn_onnx(path: Path) -> Path:
    """The ResNet-style test CNN exported by torch with a dynamic batch axis."""
    torch = pytest.importorskip("torch")
    from tests.models import small_cnn

    torch.onnx.export(
        small_cnn(),
        (torch.randn(1, 3, 32, 32),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


def mlp_model(seed: int = 0) -> onnx.ModelProto:
    """x(2x16) -> MatMul -> Add -> Tanh -> MatMul: two outputs (the final one and the hidden one)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.3, "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Tanh", ["h1"], ["hidden"], name="act"),
        helper.make_node("MatMul", ["hidden", "w2"], ["out"], name="fc2"),
    ]
    return make_graph_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 8]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [2, 32]),
        ],
        inits,
    )


def write(model: onnx.ModelProto, tmp_path: Path, precision: str = "fp32", **values):
    target = get_target("tvm")
    options = BuildOptions(precision=precision, target=target.make_options(values, precision=precision))
    return target.write(model, tmp_path, "model", options)


def max_rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12))


# ---------------------------------------------------------------------------
# Registry, laziness, the runner on its own


def test_registered_and_lazy():
    code = (
        "import sys, mconv.targets as t; tg = t.get_target('tvm'); print(tg.name, tg.precisions, 'tvm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["tvm", "('fp32',", "'fp16')", "False"]


def test_mlp_two_outputs_keyed_by_onnx_names(tmp_path):
    model = mlp_model()
    art = write(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.so", "model.tvm.json"]
    side = json.loads((tmp_path / "model.tvm.json").read_text())
    assert side["inputs"] == [{"name": "x", "shape": [2, 16], "dtype": "float32"}]
    assert side["outputs"] == ["out", "hidden"] and side["tuning"] is None
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    ref = dict(zip(["out", "hidden"], run_ort(model, {"x": x})))
    got = get_target("tvm").runner(art, threads=2).infer({"x": x})
    assert sorted(got) == ["hidden", "out"]
    for name in ref:
        assert max_rel(ref[name], got[name]) <= 1e-5, name
    # The artifact found again from either file, with the same inputs.
    target = get_target("tvm")
    for path in (art.main, tmp_path / "model.tvm.json"):
        found = target.recognise(path)
        assert found.main == art.main and found.meta["output_names"] == ["out", "hidden"]
        assert [i.shape for i in target.artifact_inputs(found)] == [(2, 16)]


def test_supported_ops_come_from_the_frontend():
    ops = get_target("tvm").supported_ops()
    assert {"Conv", "MatMul", "Softmax", "If", "com.microsoft::SkipLayerNormalization"} <= ops
    assert "Loop" not in ops and "LSTM" not in ops


# ---------------------------------------------------------------------------
# Real graphs through the CLI: build (verified against onnxruntime), verify, bench


def test_light_squeezenet_fp32_and_fp16_build_and_verify(cli, in_tmp):
    src = save(randomized_light_model("squeezenet"), in_tmp / "squeezenet.onnx")
    r = cli("build", src, "--target", "tvm", "-o", "fp32", "--json")
    assert r.code == 0, r.err
    report = r.json
    (out,) = report["verification"]["outputs"]
    assert out["rel"] <= 1e-4
    r16 = cli("build", src, "--target", "tvm", "--fp16", "-o", "fp16", "--json")
    assert r16.code == 0, r16.err
    (out16,) = r16.json["verification"]["outputs"]
    assert out16["cosine"] >= 0.9999
    # FP16 weights: the library is markedly smaller.
    assert (in_tmp / "fp16/squeezenet.so").stat().st_size < 0.7 * (in_tmp / "fp32/squeezenet.so").stat().st_size
    assert json.loads((in_tmp / "fp16/squeezenet.tvm.json").read_text())["precision"] == "fp16"
    v = cli("verify", src, in_tmp / "fp32/squeezenet.so", in_tmp / "fp16/squeezenet.tvm.json")
    assert v.code == 0, v.err


def test_torch_cnn_needs_a_fixed_batch_then_builds_verifies_and_benches(cli, in_tmp):
    src = torch_cnn_onnx(in_tmp / "cnn.onnx")
    r = cli("build", src, "--target", "tvm")
    assert_clean_error(r, 2, "input 'image'", "--input image:1x3x32x32", "--batch")
    assert not (in_tmp / "cnn_tvm").exists()
    r = cli("build", src, "--target", "tvm", "--batch", "2")
    assert r.code == 0, r.err
    assert "untuned build" in r.out + r.err  # the honest default says so
    lib = in_tmp / "cnn_tvm" / "cnn.so"
    assert json.loads(lib.with_name("cnn.tvm.json").read_text())["inputs"][0]["shape"] == [2, 3, 32, 32]
    v = cli("verify", src, lib, "--input", "image:2x3x32x32", "--json")
    assert v.code == 0, v.err
    b = cli("bench", lib, "--iters", "3", "--warmup", "1", "--json")
    assert b.code == 0, b.err
    assert "tvm" in b.out


def test_tiny_attention_block_fp32(tmp_path):
    from mconv.metrics import compare_outputs, default_tolerance
    from tests.torch_models import tiny_vit_onnx

    model = tiny_vit_onnx(depth=1, dim=32)
    art = write(model, tmp_path)
    feeds = [{"image": np.random.default_rng(s).standard_normal((1, 3, 32, 32)).astype(np.float32)} for s in (0, 1)]
    refs = [dict(zip([o.name for o in model.graph.output], run_ort(model, f))) for f in feeds]
    runner = get_target("tvm").runner(art)
    comp = compare_outputs(refs, [runner.infer(f) for f in feeds], default_tolerance("fp32"))
    assert comp.passed, comp.summary()


@pytest.mark.parametrize("size", [32, 30])
def test_untuned_convs_run_in_parallel_vector_loops_and_match_onnxruntime(tmp_path, size):
    """The default schedule (schedule=rules): every conv function gets a parallel loop, the
    stride-1 ones vector lanes where the width takes them (32: 16 lanes; 30 -> 15 wide after
    the stride-2 stem: none, a serial inner loop); the library agrees with onnxruntime, and
    with TVM's plain loops (schedule=none)."""
    torch = pytest.importorskip("torch")
    from mconv.targets.tvm.compile import import_onnx, llvm_target, prepare, schedule
    from tests.models import small_cnn

    path = tmp_path / "cnn.onnx"
    x = torch.randn(1, 3, size, size)
    torch.onnx.export(small_cnn(), (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=False)
    model = onnx.load(str(path))
    import tvm

    target = llvm_target()
    scheduled = schedule(prepare(import_onnx(model), target), target)
    convs = {gv.name_hint: f.script() for gv, f in scheduled.functions.items() if "conv2d" in gv.name_hint}
    assert len(convs) >= 2
    for name, text in convs.items():
        assert "T.parallel" in text, name
        f = scheduled[name]
        assert isinstance(f, tvm.tirx.PrimFunc) and f.attrs["tirx.is_scheduled"], name
    stride1 = [t for t in convs.values() if "T.int64(2) + v" not in t]  # the stem reads at stride 2
    assert stride1 and all(("T.vectorized" in t) == (size == 32) for t in stride1)

    feeds = [{"image": np.random.default_rng(s).standard_normal((1, 3, size, size)).astype(np.float32)} for s in (0, 1)]
    rules = get_target("tvm").runner(write(model, tmp_path / "rules"))
    plain = get_target("tvm").runner(write(model, tmp_path / "plain", schedule="none"))
    for f in feeds:
        (ref,) = run_ort(model, f)
        got = rules.infer(f)["logits"]
        assert max_rel(ref, got) <= 1e-5
        assert max_rel(plain.infer(f)["logits"], got) <= 1e-5


def test_inspect_lists_what_tvm_cannot_take(cli, in_tmp):
    src = save(custom_op_model(), in_tmp / "custom.onnx")
    r = cli("inspect", src, "--target", "tvm")
    assert "com.example::FancyOp" in r.out and "fancy_node" in r.out
    b = cli("build", src, "--target", "tvm")
    assert_clean_error(b, 1, "com.example::FancyOp", "fancy_node")
    assert not (in_tmp / "custom_tvm").exists()


# ---------------------------------------------------------------------------
# Bad input


def test_int8_is_refused_with_exit_2(cli, in_tmp):
    src = save(conv_bn_relu_model(), in_tmp / "m.onnx")
    np.save(in_tmp / "c.npy", np.zeros((1, 3, 8, 8), np.float32))
    r = cli("build", src, "--target", "tvm", "--int8", "--calib", in_tmp / "c.npy")
    assert_clean_error(r, 2, "--int8", "fp32, fp16")
    assert not (in_tmp / "m_tvm").exists()


def test_a_half_of_the_artifact_missing_is_exit_2(cli, in_tmp):
    src = save(conv_bn_relu_model(), in_tmp / "m.onnx")
    assert cli("build", src, "--target", "tvm").code == 0
    lib, side = in_tmp / "m_tvm" / "m.so", in_tmp / "m_tvm" / "m.tvm.json"
    side.rename(in_tmp / "elsewhere.json")
    assert_clean_error(cli("verify", src, lib), 2, "m.so", "m.tvm.json")
    (in_tmp / "elsewhere.json").rename(side)
    lib.unlink()
    assert_clean_error(cli("verify", src, side), 2, "m.tvm.json", "m.so")


def test_unknown_or_foreign_mcpu_and_negative_tune_are_usage_errors(tmp_path):
    model = conv_bn_relu_model()
    target = get_target("tvm")
    for values, needle in (({"mcpu": "nosuchcpu"}, "no such CPU"), ({"tune": -1}, "--tune -1")):
        options = BuildOptions(target=target.make_options(values))
        with pytest.raises(UsageError, match=needle):
            target.preflight(model, options)
    # A CPU model with features this machine lacks could not be verified here.
    import tvm

    from mconv.targets.tvm.compile import llvm_target

    codegen = tvm.target.codegen
    here = codegen.llvm_get_system_cpu()
    have = set(codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": here})))

    triple = codegen.llvm_get_system_triple()

    def lacks(cpu):
        if cpu == here or not codegen.llvm_is_valid_cpu(cpu, triple):
            return False
        feats = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
        return any("-" not in f and f not in have for f in feats)

    # A model newer than (or foreign to) this CPU: the first of these with a feature it lacks.
    candidates = ("diamondrapids", "graniterapids", "sapphirerapids", "znver5", "arrowlake", "znver4")
    foreign = next((c for c in candidates if lacks(c)), None)
    if foreign is None:
        pytest.skip(f"this CPU ({here}) has every feature of {', '.join(candidates)}")
    with pytest.raises(UsageError, match="lacks"):
        llvm_target(foreign)


def test_an_older_mcpu_builds_a_portable_library(tmp_path):
    model = conv_bn_relu_model()
    art = write(model, tmp_path, mcpu="x86-64")
    assert art.meta["mcpu"] == "x86-64"
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got = get_target("tvm").runner(art).infer({"x": x})["y"]
    assert max_rel(run_ort(model, {"x": x})[0], got) <= 1e-5


# ---------------------------------------------------------------------------
# Tuning and its cache


@pytest.mark.slow
def test_tuning_records_are_cached_and_reused(mconv_proc, in_tmp):
    # In a separate process: MetaSchedule's logging outlives pytest's in-process capture.
    # The MLP lowers to two functions (matmul+add+tanh, matmul): two trials must reach both
    # (MetaSchedule's scheduler once spent a call's whole budget on the first task).
    src = save(mlp_model(), in_tmp / "tiny.onnx")
    first = mconv_proc("build", src, "--target", "tvm", "--tune", "2", "-o", "a")
    assert first.code == 0, first.err
    assert "ran 2 MetaSchedule trials" in first.out + first.err
    tuning = json.loads((in_tmp / "a/tiny.tvm.json").read_text())["tuning"]
    assert tuning["trials_run"] == 2 and not tuning["reused"]
    folder = Path(tuning["cache"])
    assert folder.parent == in_tmp / "cache" / "tvm"
    records = [json.loads(r) for r in (folder / "database_tuning_record.json").read_text().splitlines()]
    assert all(r[1][1] for r in records)  # measured schedules, with run times
    assert len({r[0] for r in records}) == 2  # one per function: both tasks tuned

    second = mconv_proc("build", src, "--target", "tvm", "--tune", "2", "-o", "b")
    assert second.code == 0, second.err
    assert "reused 2 cached tuning trials" in " ".join((second.out + second.err).split())
    again = json.loads((in_tmp / "b/tiny.tvm.json").read_text())["tuning"]
    assert again["reused"] and again["trials_run"] == 0 and again["key"] == tuning["key"]
    # Another precision, CPU model or model is another program: another key.
    from mconv.targets.tvm.compile import llvm_target
    from mconv.targets.tvm.tuning import cache_key

    onnx_bytes, target = b"model", llvm_target()
    keys = {
        cache_key(onnx_bytes, target, "fp32"),
        cache_key(onnx_bytes, target, "fp16"),
        cache_key(onnx_bytes, llvm_target("x86-64"), "fp32"),
        cache_key(b"other model", target, "fp32"),
    }
    assert len(keys) == 4
