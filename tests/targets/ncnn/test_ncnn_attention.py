"""Attention fusion: torch-exported nn.MultiheadAttention / TransformerEncoder
blocks become one ncnn MultiHeadAttention layer; q/k/v unbind/chunk that is not
fused becomes one Slice layer; MatMul + bias becomes one Gemm with bias."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("ncnn", reason="the ncnn wheel is needed to run converted models")
torch = pytest.importorskip("torch")
nn = torch.nn

from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime  # noqa: E402


def _export(model, shape) -> tuple[onnx.ModelProto, np.ndarray]:
    torch.manual_seed(1)
    x = torch.randn(*shape)
    buf = io.BytesIO()
    # Not under no_grad: that would pick torch's fused fast path, which does not export.
    torch.onnx.export(model.eval(), (x,), buf, opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"])  # fmt: skip
    return onnx.load_from_string(buf.getvalue()), x.numpy()


def _check(model, shape, tmp_path: Path) -> str:
    """Convert, run, compare with onnxruntime (rel <= 1e-4); returns the .param text."""
    proto, x = _export(model, shape)
    ref = run_onnxruntime(proto, [{"input": x}])[0]["output"]
    outs, art = convert_and_run(proto, [{"input": x}], tmp_path)
    got = np.asarray(outs[0]["output"]).reshape(ref.shape)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, rel
    return Path(art.main).read_text()


def _types(param: str) -> list[str]:
    return [line.split()[0] for line in param.splitlines()[2:]]


class _Encoder(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, batch_first: bool = True, mask: str = "") -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.batch_first = batch_first
        self.mask = mask

    def forward(self, x):
        seq = x.shape[1]
        kw = {}
        if self.mask == "causal":
            kw["mask"] = nn.Transformer.generate_square_subsequent_mask(seq)
        elif self.mask == "padding":
            pm = torch.zeros(1, seq, dtype=torch.bool)
            pm[:, -3:] = True
            kw["src_key_padding_mask"] = pm
        if not self.batch_first:
            return self.enc(x.transpose(0, 1), **kw).transpose(0, 1)
        return self.enc(x, **kw)


@pytest.mark.parametrize(
    "dim,heads,layers,batch_first,mask",
    [
        (32, 4, 2, True, ""),
        (32, 1, 1, True, ""),
        (48, 6, 1, True, ""),
        (64, 8, 1, True, "padding"),
        (32, 2, 1, True, "causal"),
        (32, 4, 1, False, ""),
    ],
)
def test_encoder_attention_fused(dim, heads, layers, batch_first, mask, tmp_path: Path) -> None:
    param = _check(_Encoder(dim, heads, layers, batch_first, mask), (1, 12, dim), tmp_path)
    types = _types(param)
    assert types.count("MultiHeadAttention") == layers
    for t in ("Softmax", "MatMul", "Permute", "Crop"):
        assert t not in types, t
    if mask:
        assert " 5=1 " in next(line for line in param.splitlines() if line.startswith("MultiHeadAttention"))


class _MHA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.m = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.m(x, x, x, need_weights=False)[0]


def test_multihead_attention_module_is_one_layer(tmp_path: Path) -> None:
    param = _check(_MHA(32, 8), (1, 10, 32), tmp_path)
    assert _types(param) == ["Input", "MultiHeadAttention"]


def test_fallback_uses_one_slice(monkeypatch, tmp_path: Path) -> None:
    import mconv.targets.ncnn.fuse as fuse

    monkeypatch.setattr(fuse, "fuse_attention", lambda prep, nodes: nodes)
    param = _check(_Encoder(32, 4, 1), (1, 12, 32), tmp_path)
    types = _types(param)
    assert "MultiHeadAttention" not in types and "Crop" not in types
    assert types.count("Slice") == 1


class _Chunk(nn.Module):
    def forward(self, x):
        a, b, c = x.chunk(3, dim=-1)
        d, e = (x * 2.0).unbind(1)
        return a * b + c + (d - e).unsqueeze(1)[..., :11]


def test_chunk_and_unbind_become_slice(tmp_path: Path) -> None:
    types = _types(_check(_Chunk(), (1, 2, 12, 33), tmp_path))
    assert types.count("Slice") == 2 and "Crop" in types  # the [..., :11] stays a Crop


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 24)
        self.b = nn.Linear(24, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_matmul_bias_is_one_layer(tmp_path: Path) -> None:
    types = _types(_check(_Linear(), (1, 5, 16), tmp_path))
    assert "MemoryData" not in types and "BinaryOp" not in types


def test_batch_two_is_not_fused(tmp_path: Path) -> None:
    # Rows of a batch of 2 are not positions of one sequence: no fusion; the
    # op-by-op lowering (which keeps the batch in the Mats) stays exact.
    param = _check(_MHA(16, 2), (2, 6, 16), tmp_path)
    assert "MultiHeadAttention" not in _types(param)


class _WindowQKV(nn.Module):
    """Swin-style windowed attention: qkv laid out as [3, windows, heads, N, d] (rank 5,
    five axes > 1), which no ncnn Mat holds whole."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # x: [windows, N, dim]
        w, n, c = x.shape
        qkv = self.qkv(x).reshape(w, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(w, n, c))


def test_rank5_qkv_is_not_split_fused_and_still_converts(tmp_path: Path) -> None:
    # Regression: the Split fusion turned qkv[0..2] into one Split of the rank-5 tensor,
    # which no rule can lower; the model (that converted before) became unsupported.
    types = _types(_check(_WindowQKV(), (4, 9, 16), tmp_path))
    # 4 windows: no MultiHeadAttention (batch 1 only); the core is one SDPA, exact.
    assert "SDPA" in types and "MultiHeadAttention" not in types


class _MaskedMHA(nn.Module):
    """Attention whose additive mask is a second graph input (known only at run time)."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x, mask):
        return self.mha(x, x, x, attn_mask=mask, need_weights=False)[0]


def test_dynamic_mask_attention_matches(tmp_path: Path) -> None:
    torch.manual_seed(2)
    x, mask = torch.randn(1, 6, 16), torch.randn(6, 6)
    buf = io.BytesIO()
    torch.onnx.export(_MaskedMHA().eval(), (x, mask), buf, opset_version=17, dynamo=False,
                      input_names=["input", "mask"], output_names=["output"])  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    assert [i.name for i in proto.graph.input] == ["input", "mask"]
    for seed in (3, 4):  # two different masks through the same artifact
        g = torch.Generator().manual_seed(seed)
        feeds = {"input": x.numpy(), "mask": (torch.randn(6, 6, generator=g) * 3).numpy()}
        ref = run_onnxruntime(proto, [feeds])[0]["output"]
        outs, _ = convert_and_run(proto, [feeds], tmp_path / str(seed))
        got = np.asarray(outs[0]["output"]).reshape(ref.shape)
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


@pytest.mark.parametrize("mask", ["", "causal"])
def test_encoder_int8_quantizes_attention_and_projections(mask: str, tmp_path: Path) -> None:
    from mconv.metrics import compare_outputs, default_tolerance
    from mconv.targets.base import BuildOptions

    proto, x = _export(_Encoder(32, 4, 2, True, mask), (1, 12, 32))
    rng = np.random.default_rng(5)
    calib = [{"input": rng.standard_normal(x.shape).astype(np.float32)} for _ in range(8)]
    feeds = [{"input": x}, calib[0]]
    refs = run_onnxruntime(proto, feeds)
    outs, art = convert_and_run(proto, feeds, tmp_path, BuildOptions("int8", calib=calib))
    comp = compare_outputs(refs, outs, default_tolerance("int8"))  # cos >= 0.99
    assert comp.passed, comp.summary()
    param = Path(art.main).read_text().splitlines()
    mha = [line for line in param if line.startswith("MultiHeadAttention ")]
    gemm = [line for line in param if line.startswith("Gemm ")]
    assert len(mha) == 2 and all(" 18=2" in line for line in mha)
    assert len(gemm) == 4 and all(" 18=2" in line for line in gemm)
    assert not art.meta.get("warnings")
    # The .table carries the attention weight scales the way ncnn2table writes them.
    table = {line.split()[0]: line.split()[1:] for line in art.main.with_suffix(".table").read_text().splitlines()}
    name = mha[0].split()[1]
    assert [len(table[f"{name}_param_{i}"]) for i in range(4)] == [32, 32, 32, 1]
