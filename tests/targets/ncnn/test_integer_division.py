"""Integer Div and Mod by a constant are exact on every CPU.

ncnn may divide by a scalar as a product with its reciprocal (its AVX-512 path does), so
a plain division followed by a truncation turned 15 / 3 into 4 on such machines (found on
an AMX/AVX-512 CPU by the RT-DETR query-selection pattern). The inputs here are exact
multiples and their neighbours, both signs, divisors of both signs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime


def _model(op: str, divisor: int):
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
        helper.make_node(op, ["xi", "d"], ["qi"]),
        helper.make_node("Cast", ["qi"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "intdiv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor("d", TensorProto.INT64, [], [divisor])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op", ["Div", "Mod"])
@pytest.mark.parametrize("divisor", [3, -3, 7, 1000])
def test_integer_div_and_mod_by_a_constant_are_exact(op, divisor, tmp_path):
    values = np.concatenate([np.arange(-32, 32) * 3, np.arange(-32, 32) * 7 + 1, np.arange(-32, 32) * 1000 - 1])
    samples = [{"x": values[i : i + 64].reshape(1, 64).astype(np.float32)} for i in (0, 64, 128)]
    model = _model(op, divisor)
    refs = run_onnxruntime(model, samples)
    outs, _ = convert_and_run(model, samples, tmp_path / "out")
    for r, o in zip(refs, outs):
        np.testing.assert_array_equal(o["y"].reshape(-1), r["y"].reshape(-1))
