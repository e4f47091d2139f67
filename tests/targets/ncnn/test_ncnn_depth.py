"""Graphs deeper than ncnn's runtime can run are refused before anything is written.

ncnn runs layers recursively: a ReLU chain crashed the runtime natively (SIGSEGV)
past 47,251 layers on an 8 MiB stack (measured; see writer.MAX_DEPTH).
"""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper


def relu_chain(n: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [1, 8])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.slow
def test_a_graph_deeper_than_ncnn_runs_is_refused_naming_its_depth(tmp_path, mconv_proc):
    src = tmp_path / "deep.onnx"
    onnx.save(relu_chain(33_000), str(src))
    # --passes infer_shapes: onnxsim would merge the chain (and the test would take longer).
    r = mconv_proc("build", src, "-t", "ncnn", "--passes", "infer_shapes", "-o", tmp_path / "out", cwd=tmp_path)
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert "33001 layers deep" in lines[0] and "32768" in lines[0]
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
