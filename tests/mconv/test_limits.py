"""Limits derived from the model: the fold limit and the runner timeout."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from mconv.errors import UsageError
from mconv.limits import fold_limit, runner_timeout


def _model(nodes: int, weight_floats: int):
    # Declared as external data: the limits read dims only, so no bytes are needed.
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[weight_floats])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    ns = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(nodes)]
    g = helper.make_graph(
        ns,
        "g",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1])],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_fold_limit_is_twice_the_weights_with_a_1_gib_floor(monkeypatch):
    monkeypatch.delenv("MCONV_FOLD_LIMIT", raising=False)
    assert fold_limit(_model(1, 10)) == 1 << 30
    assert fold_limit(_model(1, 200 << 20)) == 2 * 4 * (200 << 20)  # 800 MiB of weights -> 1600 MiB
    monkeypatch.setenv("MCONV_FOLD_LIMIT", "2G")
    assert fold_limit(_model(1, 10)) == 2 << 30


def test_runner_timeout_scales_with_nodes_and_weights(monkeypatch):
    monkeypatch.delenv("MCONV_TIMEOUT", raising=False)
    assert runner_timeout(_model(1000, 1)) == pytest.approx(140.0, abs=0.01)  # 120 + 1000 x 20 ms
    assert runner_timeout(_model(1, 1 << 28)) == pytest.approx(180.02, abs=0.01)  # + 60 s for 1 GiB
    assert runner_timeout(_model(1000, 1), 5.0) == 5.0  # --timeout
    monkeypatch.setenv("MCONV_TIMEOUT", "nope")
    with pytest.raises(UsageError, match="MCONV_TIMEOUT"):
        runner_timeout(_model(1, 1))
