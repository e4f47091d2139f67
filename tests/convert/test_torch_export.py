"""mconv export for every PyTorch source kind, verified against PyTorch; bad sources."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import assert_clean_error
from tests.models import run_ort, small_cnn, transformer_encoder


def _verified(report: dict, limit: float = 1e-4) -> None:
    v = report["verification"]
    assert v["passed"] is True
    assert all(float(o["rel"]) <= limit for o in v["outputs"])


def test_torchscript_cnn(cli, in_tmp):
    src = in_tmp / "cnn.pt"
    torch.jit.save(torch.jit.trace(small_cnn(), torch.randn(1, 3, 32, 32)), str(src))
    r = cli("export", src, "--to", "onnx", "--input", "input:1x3x32x32", "--json")
    assert r.code == 0, r.err
    rep = r.json
    _verified(rep)
    assert rep["artifacts"] == [str(in_tmp / "cnn.onnx")]
    m = onnx.load(str(in_tmp / "cnn.onnx"))
    onnx.checker.check_model(m)
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = small_cnn()(torch.from_numpy(x)).numpy()
    got = run_ort(m, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_traced_transformer_encoder_fast_path(cli, in_tmp):
    enc = transformer_encoder()
    x = torch.randn(2, 10, 32)
    with torch.inference_mode():
        traced = torch.jit.trace(enc, x)
    ops = {n.kind() for n in traced.inlined_graph.nodes()}
    assert "aten::_transformer_encoder_layer_fwd" in ops  # the fused op torch's exporter refuses
    src = in_tmp / "enc.pt"
    torch.jit.save(traced, str(src))
    r = cli("export", src, "--input", "src:2x10x32", "--json")
    assert r.code == 0, r.err
    _verified(r.json)
    m = onnx.load(str(in_tmp / "enc.onnx"))
    assert {"Softmax", "LayerNormalization", "MatMul"} <= {n.op_type for n in m.graph.node}


def test_native_multi_head_attention_fast_path(cli, in_tmp):
    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    m = Attn().eval()
    with torch.inference_mode():
        traced = torch.jit.trace(m, torch.randn(1, 5, 16))
    assert "aten::_native_multi_head_attention" in {n.kind() for n in traced.inlined_graph.nodes()}
    src = in_tmp / "mha.pt"
    torch.jit.save(traced, str(src))
    r = cli("export", src, "--input", "x:1x5x16", "--json")
    assert r.code == 0, r.err
    _verified(r.json)


def test_exported_program(cli, in_tmp):
    ep = torch.export.export(small_cnn(), (torch.randn(1, 3, 32, 32),))
    src = in_tmp / "cnn.pt2"
    torch.export.save(ep, str(src))
    r = cli("export", src, "--json")  # input shapes come from the program itself
    assert r.code == 0, r.err
    assert r.json["exporter"] == "dynamo"
    _verified(r.json)


def test_state_dict_with_factory_file(cli, in_tmp):
    (in_tmp / "arch.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc1 = torch.nn.Linear(8, 16)\n"
        "        self.fc2 = torch.nn.Linear(16, 4)\n"
        "    def forward(self, x):\n"
        "        return self.fc2(torch.relu(self.fc1(x)))\n"
    )
    torch.manual_seed(1)
    import importlib.util

    spec = importlib.util.spec_from_file_location("arch_for_test", in_tmp / "arch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.Net().state_dict(), in_tmp / "weights.pt")
    r = cli("export", in_tmp / "weights.pt", "--model", f"{in_tmp / 'arch.py'}:Net", "--input", "x:2x8", "--json")
    assert r.code == 0, r.err
    _verified(r.json)


def test_state_dict_needs_model_flag(cli, in_tmp):
    torch.save(small_cnn().state_dict(), in_tmp / "w.pt")
    assert_clean_error(cli("export", in_tmp / "w.pt", "--input", "x:1x3x32x32"), 2, "--model")


def test_state_dict_with_module_factory(cli, in_tmp):
    torch.save(small_cnn().state_dict(), in_tmp / "w.pt")
    r = cli("export", in_tmp / "w.pt", "--model", "tests.models:small_cnn", "--input", "x:1x3x32x32", "--json")
    assert r.code == 0, r.err
    _verified(r.json)


def test_pickled_module_needs_trust_pickle(cli, in_tmp):
    torch.save(small_cnn(), in_tmp / "full.pt")
    r = cli("export", in_tmp / "full.pt", "--input", "x:1x3x32x32")
    assert_clean_error(r, 2, "--trust-pickle", "runs code")
    assert not (in_tmp / "full.onnx").exists()
    r = cli("export", in_tmp / "full.pt", "--input", "x:1x3x32x32", "--trust-pickle", "--json")
    assert r.code == 0, r.err
    _verified(r.json)


class _Payload:
    """Unpickling this calls os.system: the classic pickle code-execution attack."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol_zip", [True, False])
def test_malicious_pickle_is_not_executed(cli, in_tmp, protocol_zip):
    marker = in_tmp / "PWNED"
    path = in_tmp / "evil.pt"
    if protocol_zip:
        torch.save({"state": _Payload(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    for cmd in (
        ("export", path, "--input", "x:1x3"),
        ("build", path, "-t", "onnx", "--input", "x:1x3"),
        ("inspect", path),
    ):
        r = cli(*cmd)
        assert r.code == 2, r.err
        assert "--trust-pickle" in r.err
    assert not marker.exists()


def test_zip_that_is_not_torch(cli, in_tmp):
    import zipfile

    with zipfile.ZipFile(in_tmp / "junk.pt", "w") as z:
        z.writestr("hello.txt", "not a model")
    assert_clean_error(cli("export", in_tmp / "junk.pt", "--input", "x:1"), 2, "junk.pt", "neither TorchScript")


def test_random_bytes_pt_and_pt2(cli, in_tmp):
    for name in ("rand.pt", "rand.pt2"):
        (in_tmp / name).write_bytes(np.random.default_rng(0).bytes(512))
        r = cli("export", in_tmp / name, "--input", "x:1")
        assert_clean_error(r, 2, name)


def test_torchscript_without_input_spec(cli, in_tmp):
    src = in_tmp / "cnn.pt"
    torch.jit.save(torch.jit.trace(small_cnn(), torch.randn(1, 3, 32, 32)), str(src))
    assert_clean_error(cli("export", src), 2, "--input NAME:1x3x224x224")


def test_dynamic_axis(cli, in_tmp):
    src = in_tmp / "cnn.pt"
    torch.jit.save(torch.jit.script(small_cnn()), str(src))
    r = cli("export", src, "--input", "input:2x3x32x32", "--dynamic", "input:0=batch", "--json")
    assert r.code == 0, r.err
    m = onnx.load(str(in_tmp / "cnn.onnx"))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    assert run_ort(m, {"input": x})[0].shape == (5, 10)


def test_build_from_torchscript_runs_export_first(cli, in_tmp):
    src = in_tmp / "cnn.pt"
    torch.jit.save(torch.jit.trace(small_cnn(), torch.randn(1, 3, 32, 32)), str(src))
    r = cli("build", src, "-t", "onnx", "--input", "input:1x3x32x32", "--json")
    assert r.code == 0, r.err
    assert r.json["source_kind"] == "torch"
    assert (in_tmp / "cnn_onnx" / "cnn.onnx").is_file()
    json.dumps(r.json)
