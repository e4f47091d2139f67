"""Large weights: checks never copy them, write() reads each once and consumes it.

The mechanism on a moderate model (a few MiB of weights, above fold.LAZY_BYTES);
the memory numbers themselves are measured by bench/memory.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.targets.base import BuildOptions
from mconv.targets.ncnn import fold
from mconv.targets.ncnn import target as ncnn_target
from mconv.targets.ncnn.target import NcnnTarget

K, N = 1024, 768  # 3 MiB of float32 per weight


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((K, N)) * 0.03).astype(np.float32)
    w1 = (rng.standard_normal((N, K)) * 0.03).astype(np.float32)
    b0 = rng.standard_normal(N).astype(np.float32)
    # w1 also feeds a second MatMul: a weight with two consumers.
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Add", ["h", "b0"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y0"]),
        helper.make_node("Sigmoid", ["r"], ["s"]),
        helper.make_node("MatMul", ["s", "w1"], ["y1"]),
        helper.make_node("Add", ["y0", "y1"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "mem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, K])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b0, "b0")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _big(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer if t.name in ("w0", "w1")}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the large initializers read (converted to arrays)."""
    reads: list[str] = []
    orig = fold.LazyConst.value

    def value(self, **kw):
        if self._value is None and self._gone is None:
            reads.append(self.name)
        return orig(self, **kw)

    monkeypatch.setattr(fold.LazyConst, "value", value)
    return reads


def test_weights_above_the_limit_are_lazy() -> None:
    prep = fold.fold_graph(_model(), mode="lazy")
    assert isinstance(prep.consts["w0"], fold.LazyConst)
    assert not isinstance(prep.consts["b0"], fold.LazyConst)  # small: eager
    assert prep.shapes["w0"] == (K, N) and prep.dtypes["w0"] == np.float32
    assert prep.shapes["y"] == (1, K)
    eager = fold.fold_graph(_model())
    assert np.array_equal(np.asarray(prep.consts["w1"]), eager.consts["w1"])


def test_checks_do_not_read_or_change_large_weights(counted: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from mconv.targets.ncnn import writer

    # preflight lowers weights of PLACEHOLDER_BYTES and up as zeros (smaller ones
    # are read, then dropped): make these count as large.
    monkeypatch.setattr(writer, "PLACEHOLDER_BYTES", fold.LAZY_BYTES)
    m = _model()
    before = m.SerializeToString()
    t = NcnnTarget()
    assert t.unsupported(m) == {}
    assert t.preflight(m, BuildOptions()) == []
    assert counted == []
    assert m.SerializeToString() == before


def test_small_models_are_not_consumed(tmp_path: Path) -> None:
    m = _model()
    before = m.SerializeToString()
    NcnnTarget().write(m, tmp_path, "m", BuildOptions())
    assert m.SerializeToString() == before


@pytest.mark.parametrize("values_to_scratch", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_consuming_write_is_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: list[str], precision: str, values_to_scratch: bool
) -> None:
    ref = NcnnTarget().write(_model(), tmp_path / "ref", "m", BuildOptions(precision=precision))
    assert counted == []  # eager below CONSUME_MIN_BYTES

    monkeypatch.setattr(ncnn_target, "CONSUME_MIN_BYTES", 0)
    if values_to_scratch:  # as weights of SCRATCH_VALUE_BYTES and up are
        monkeypatch.setattr(fold, "SCRATCH_VALUE_BYTES", 0)
    m = _model()
    art = NcnnTarget().write(m, tmp_path / "big", "m", BuildOptions(precision=precision))
    assert sorted(counted) == ["w0", "w1"]  # each read once, w1 despite two consumers
    for t in _big(m).values():
        assert not t.HasField("raw_data")  # consumed: the writer owned the model
    assert "b0" in {t.name for t in m.graph.initializer if t.HasField("raw_data")}
    for ext in (".param", ".bin", ".mconv.json"):
        assert art.main.with_suffix(ext).read_bytes() == ref.main.with_suffix(ext).read_bytes()
    # The scratch file is anonymous: nothing but the artifact is left behind.
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["m.bin", "m.mconv.json", "m.param"]


def test_write_bin_streams_the_same_bytes(tmp_path: Path) -> None:
    from mconv.targets.ncnn.writer import lower_model

    lowered = lower_model(_model())
    with open(tmp_path / "x.bin", "wb") as f:
        lowered.graph.write_bin(f)
    assert (tmp_path / "x.bin").read_bytes() == lowered.graph.to_bin()
