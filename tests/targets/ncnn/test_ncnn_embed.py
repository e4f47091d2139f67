"""Token-id inputs: Gather from a constant table with integer indices from a graph
input becomes ncnn's Embed; integer inputs used any other way are refused before
anything is written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ncnn", reason="the ncnn wheel is needed to run converted models")
torch = pytest.importorskip("torch")
nn = torch.nn

from mconv.errors import UnsupportedOpsError  # noqa: E402
from mconv.metrics import compare_outputs, default_tolerance  # noqa: E402
from mconv.targets.base import BuildOptions  # noqa: E402
from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime  # noqa: E402
from tests.conftest import assert_clean_error  # noqa: E402

VOCAB, DIM, SEQ = 50, 32, 12


class _TextEncoder(nn.Module):
    """Token + learned position embeddings, one encoder layer, a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(1, SEQ, DIM) * 0.5)
        self.enc = nn.TransformerEncoderLayer(DIM, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(DIM, 5)

    def forward(self, ids):
        return self.head(self.enc(self.tok(ids) + self.pos))


def _export() -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(_TextEncoder().eval(), (torch.zeros(1, SEQ, dtype=torch.int64),), buf, opset_version=17,
                      dynamo=False, input_names=["ids"], output_names=["logits"])  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def _ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (1, SEQ)).astype(np.int64)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_token_embedding_model_matches_onnxruntime(tmp_path: Path, precision: str) -> None:
    proto = _export()
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    feeds = [{"ids": _ids(s)} for s in (1, 2, 3)]
    feeds[0]["ids"][0, :2] = [0, VOCAB - 1]  # both ends of the table
    refs = run_onnxruntime(proto, feeds)
    outs, art = convert_and_run(proto, feeds, tmp_path, BuildOptions(precision))
    comp = compare_outputs(refs, outs, default_tolerance(precision))
    assert comp.passed, comp.summary()
    assert "\nEmbed " in art.main.read_text()


def test_cli_build_verifies_a_token_model(cli, in_tmp: Path) -> None:
    onnx.save(_export(), "text.onnx")
    r = cli("build", "text.onnx", "--target", "ncnn", "-o", "out")
    assert r.code == 0, r.err
    assert (in_tmp / "out" / "text.param").is_file()


def test_integer_input_used_as_data_is_refused_before_writing(tmp_path: Path) -> None:
    # ids + 1 would add to int32 bits read as float: refused, naming the node.
    g = helper.make_graph(
        [helper.make_node("Add", ["ids", "one"], ["s"], name="shift"),
         helper.make_node("Gather", ["table", "s"], ["y"], name="lookup")],
        "t", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        [numpy_helper.from_array(np.ones((1,), np.int64), "one"),
         numpy_helper.from_array(np.ones((6, 3), np.float32), "table")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpsError) as e:
        convert_and_run(m, [{"ids": np.zeros((1, 4), np.int64)}], tmp_path / "out")
    assert "shift" in str(e.value) and "integer input 'ids'" in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_integer_input_shared_by_two_lookups_is_refused(tmp_path: Path) -> None:
    # A shared blob goes through a Split layer, which ncnn converts to fp16/bf16
    # storage on ARM: the ids' int32 bits would be lost there.
    g = helper.make_graph(
        [helper.make_node("Gather", ["t1", "ids"], ["a"], name="tok"),
         helper.make_node("Gather", ["t2", "ids"], ["b"], name="other"),
         helper.make_node("Add", ["a", "b"], ["y"])],
        "t", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        [numpy_helper.from_array(np.ones((6, 3), np.float32), "t1"),
         numpy_helper.from_array(np.ones((6, 3), np.float32), "t2")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpsError) as e:
        convert_and_run(m, [{"ids": np.zeros((1, 4), np.int64)}], tmp_path / "out")
    assert "read by 2 nodes" in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_dynamic_batch_mixed_into_rows_names_the_input_to_fix(cli, in_tmp: Path) -> None:
    buf = io.BytesIO()
    torch.onnx.export(_TextEncoder().eval(), (torch.zeros(1, SEQ, dtype=torch.int64),), buf, opset_version=17,
                      dynamo=False, input_names=["ids"], output_names=["logits"],
                      dynamic_axes={"ids": {0: "batch"}})  # fmt: skip
    (in_tmp / "dyn.onnx").write_bytes(buf.getvalue())
    r = cli("build", "dyn.onnx", "--target", "ncnn", "-o", "out")
    assert_clean_error(r, 1, "batch", "--input ids:1x")
    assert not (in_tmp / "out").exists()
    r = cli("build", "dyn.onnx", "--target", "ncnn", "-o", "out", "--input", f"ids:1x{SEQ}")
    assert r.code == 0, r.err
