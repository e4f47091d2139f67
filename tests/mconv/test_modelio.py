"""Safe ONNX loading: external data stays inside the model's folder, sizes are checked,
writes are atomic."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mconv.errors import InputError
from mconv.modelio import load_onnx, save_onnx
from tests.models import make_graph_model


def _gemm_model(n: int = 64) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(n * n, dtype=np.float32).reshape(n, n) / (n * n), "W")
    return make_graph_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [w],
    )


def _external(tmp_path, location: str, *, length: int | None = None) -> str:
    m = _gemm_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length or 64 * 64 * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    p = tmp_path / "model" / "m.onnx"
    p.parent.mkdir(exist_ok=True)
    onnx.save(m, str(p))
    return str(p)


def test_external_data_roundtrip(tmp_path):
    m = _gemm_model()
    files = save_onnx(m, tmp_path / "m.onnx", external=True)
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    back = load_onnx(tmp_path / "m.onnx")
    np.testing.assert_array_equal(
        numpy_helper.to_array(back.graph.initializer[0]), numpy_helper.to_array(m.graph.initializer[0])
    )


@pytest.mark.parametrize("location", ["../secret.bin", "../../etc/passwd", "sub/../../x.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64 * 64 * 4)
    with pytest.raises(InputError, match="outside the model's folder"):
        load_onnx(_external(tmp_path, location))


def test_absolute_external_data_path_is_refused(tmp_path):
    target = tmp_path / "abs.bin"
    target.write_bytes(b"\0" * 64 * 64 * 4)
    with pytest.raises(InputError, match="absolute path"):
        load_onnx(_external(tmp_path, str(target)))


def test_symlink_escaping_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 64 * 64 * 4)
    p = _external(tmp_path, "link.bin")
    os.symlink(outside, os.path.join(os.path.dirname(p), "link.bin"))
    with pytest.raises(InputError, match="outside the model's folder"):
        load_onnx(p)


def test_missing_and_wrong_size_external_data(tmp_path):
    p = _external(tmp_path, "w.bin")
    with pytest.raises(InputError, match="missing"):
        load_onnx(p)
    with open(os.path.join(os.path.dirname(p), "w.bin"), "wb") as f:
        f.write(b"\0" * 100)
    with pytest.raises(InputError, match="wrong size"):
        load_onnx(p)


def test_declared_size_exceeding_data(tmp_path):
    m = _gemm_model()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:100]
    p = tmp_path / "short.onnx"
    onnx.save(m, str(p))
    with pytest.raises(InputError, match="declares shape"):
        load_onnx(p)


def test_opset_newer_than_installed_onnx(tmp_path):
    m = _gemm_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    p = tmp_path / "future.onnx"
    onnx.save(m, str(p))
    with pytest.raises(InputError, match="newer than the installed onnx"):
        load_onnx(p)


def test_dangling_input_and_cycle_rejected(tmp_path):
    dangling = make_graph_model(
        [helper.make_node("Relu", ["nope"], ["y"], name="r")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    cycle = make_graph_model(
        [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
    for name, m in (("dangling", dangling), ("cycle", cycle)):
        p = tmp_path / f"{name}.onnx"
        onnx.save(m, str(p))
        with pytest.raises(InputError, match="invalid ONNX model"):
            load_onnx(p)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    m = _gemm_model()
    dest = tmp_path / "out.onnx"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    with pytest.raises(RuntimeError):
        save_onnx(m, dest)
    assert list(tmp_path.iterdir()) == []
