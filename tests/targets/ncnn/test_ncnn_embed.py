"""Integer inputs: token ids (Gather from a constant table with indices straight from
a graph input) become ncnn's Embed and are fed as int32 bits; integer inputs used as
values (masks, computed indices) are fed as float values; an input read several ways
goes through one Embed whose table also yields the ids' values."""

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


def _computed_lookup() -> onnx.ModelProto:
    # Indices computed from an integer input (ids + 1, some negative) index a table.
    g = helper.make_graph(
        [helper.make_node("Add", ["ids", "one"], ["s"], name="shift"),
         helper.make_node("Gather", ["table", "s"], ["y"], name="lookup")],
        "t", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        [numpy_helper.from_array(np.ones((1,), np.int64), "one"),
         numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32), "table")],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_integer_input_used_as_values_is_fed_as_floats(tmp_path: Path) -> None:
    m = _computed_lookup()
    feeds = [{"ids": np.array([[0, 4, -3, -7]], np.int64)}, {"ids": np.array([[2, 1, 3, -1]], np.int64)}]
    refs = run_onnxruntime(m, feeds)
    outs, art = convert_and_run(m, feeds, tmp_path / "out")
    np.testing.assert_array_equal(outs[0]["y"], refs[0]["y"])
    np.testing.assert_array_equal(outs[1]["y"], refs[1]["y"])
    assert art.meta["inputs"][0]["feed"] == "float"
    assert "\nEmbed " not in art.main.read_text()


def _ids_model(nodes, tables: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])],
        [numpy_helper.from_array(v, k) for k, v in tables.items()],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _table(seed: int, rows: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3)).astype(np.float32)


def _check_one_embed(m: onnx.ModelProto, tmp_path: Path) -> None:
    feeds = [{"ids": np.array([[0, 5, 2, 3]], np.int64)}, {"ids": np.array([[4, 1, 1, 0]], np.int64)}]
    refs = run_onnxruntime(m, feeds)
    outs, art = convert_and_run(m, feeds, tmp_path / "out")
    for o, r in zip(outs, refs):
        np.testing.assert_allclose(o["y"], r["y"], rtol=1e-6, atol=1e-6)
    layers = [line.split() for line in art.main.read_text().splitlines()[2:]]
    assert [x[0] for x in layers].count("Embed") == 1 and art.meta["inputs"][0]["feed"] == "int32"
    # The ids blob feeds exactly one layer (a Split could convert it to fp16 storage on ARM).
    readers = [x for x in layers if "ids" in x[4 : 4 + int(x[2])]]
    assert len(readers) == 1, readers


def test_integer_input_read_as_ids_and_as_values_shares_one_embed(tmp_path: Path) -> None:
    # RoBERTa-like: ids index a table and are also read as values (here: added as floats).
    m = _ids_model(
        [helper.make_node("Gather", ["table", "ids"], ["a"], name="tok"),
         helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT, name="as_float"),
         helper.make_node("Unsqueeze", ["f", "ax"], ["fu"]),
         helper.make_node("Add", ["a", "fu"], ["y"])],
        {"table": _table(0), "ax": np.array([2], np.int64)},
    )  # fmt: skip
    _check_one_embed(m, tmp_path)


def test_integer_input_shared_by_two_lookups_shares_one_embed(tmp_path: Path) -> None:
    # Two tables of different heights looked up by the same ids: one Embed, two slices.
    m = _ids_model(
        [helper.make_node("Gather", ["t1", "ids"], ["a"], name="tok"),
         helper.make_node("Gather", ["t2", "ids"], ["b"], name="other"),
         helper.make_node("Add", ["a", "b"], ["y"])],
        {"t1": _table(1), "t2": _table(2, rows=8)},
    )  # fmt: skip
    _check_one_embed(m, tmp_path)


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
