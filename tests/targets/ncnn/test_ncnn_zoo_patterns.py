"""Patterns from real-world models (bench/zoo_ncnn.py) that the ncnn writer once
refused or got wrong, each rebuilt as a small PyTorch module: exported with the
TorchScript exporter, optimized with the default passes, converted, run by ncnn and
compared with onnxruntime on the same samples."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("ncnn", reason="the ncnn wheel is needed to run converted models")
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from mconv.errors import ConversionError, UnsupportedOpsError  # noqa: E402
from mconv.metrics import compare_outputs, default_tolerance  # noqa: E402
from mconv.passes import optimize  # noqa: E402
from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime  # noqa: E402


def export(module: nn.Module, samples: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    torch.manual_seed(0)
    buf = io.BytesIO()
    names = list(samples[0])
    args = tuple(torch.from_numpy(samples[0][n]) for n in names)
    torch.onnx.export(module.eval(), args, buf, opset_version=17, dynamo=False, input_names=names,
                      output_names=["out"])  # fmt: skip
    model, _ = optimize(onnx.load_from_string(buf.getvalue()))
    return model


def check(module: nn.Module, samples: list[dict[str, np.ndarray]], tmp: Path, ops: tuple[str, ...] = ()):
    """Convert and compare on every sample (FP32 tolerance); return the artifact."""
    model = export(module, samples)
    for op in ops:  # the pattern under test really is in the optimized graph
        assert any(n.op_type == op for n in model.graph.node), f"{op} not in the exported graph"
    refs = run_onnxruntime(model, samples)
    outs, art = convert_and_run(model, samples, tmp / "out")
    comp = compare_outputs(refs, outs, default_tolerance("fp32"))
    assert comp.passed, comp.summary()
    return art


def images(shape, n=2):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


class MaskedAttention(nn.Module):
    """BERT as transformers 5 exports it: the int64 attention mask becomes a boolean
    (And, Where with finfo.min) and the softmax is guarded by Where(IsNaN(p), 0, p)."""

    def __init__(self, dim: int = 32, heads: int = 4, vocab: int = 50) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keep = attention_mask.bool()[:, None, None, :] & torch.ones(1, 1, t, t, dtype=torch.bool)
        bias = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias, dim=-1)
        p = torch.where(torch.isnan(p), 0.0, p)
        return self.out((p @ v).transpose(1, 2).reshape(b, t, d))


def test_text_encoder_with_a_runtime_attention_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = []
    for pad in (0, 5):
        mask = np.ones((1, 12), np.int64)
        mask[:, 12 - pad :] = 0
        samples.append({"input_ids": rng.integers(0, 50, (1, 12)).astype(np.int64), "attention_mask": mask})
    art = check(MaskedAttention(), samples, tmp_path, ops=("Where", "IsNaN"))
    feeds = {i["name"]: i["feed"] for i in art.meta["inputs"]}
    assert feeds == {"input_ids": "int32", "attention_mask": "float"}


class Comparisons(nn.Module):
    def forward(self, x):
        y = torch.where(x > 0.5, x, -x) + (x == 0).float() + (x <= -1).float() * 2
        return y + torch.logical_not(x < 0).float() * 3 + torch.logical_xor(x > 0, x > 1).float()


def test_comparisons_and_where_on_floats(tmp_path: Path) -> None:
    samples = images((1, 8, 6))
    samples[0]["x"][0, 0, :4] = [0.0, 0.5, -1.0, 1.0]  # the boundaries of each comparison
    check(Comparisons(), samples, tmp_path, ops=("Where", "Equal", "Not"))


class GeluNew(nn.Module):
    """GPT-2's gelu_new, x ** 3 inside (ncnn's pow is garbage for bases <= 0), and
    MetaFormer's StarReLU, relu(x) ** 2 (zero bases)."""

    def forward(self, x):
        g = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
        return g + 0.8 * F.relu(x) ** 2 + torch.abs(x) ** 1.5 - 0.1 + x**-2


def test_pow_with_zero_and_negative_bases(tmp_path: Path) -> None:
    samples = images((1, 4, 16))
    samples[0]["x"][0, 0, :3] = [0.5, -2.0, 3.0]
    art = check(GeluNew(), samples, tmp_path, ops=("Pow",))
    assert "BinaryOp" in art.main.read_text()


class Unfold(nn.Module):
    """MobileViTv2's unfolding: [B, C, nh, ph, nw, pw] -> [B, C, ph, pw, nh, nw], five
    axis groups (more than a Mat has) in one Transpose."""

    def forward(self, x):
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, c * 4, h // 2, w // 2) * 2.0


def test_transpose_of_five_axis_groups(tmp_path: Path) -> None:
    art = check(Unfold(), images((1, 3, 8, 12)), tmp_path)
    assert art.main.read_text().count("Permute") >= 2


class GridAttentionPartition(nn.Module):
    """timm's MaxViT grid attention (maxxvit.grid_partition / grid_reverse) on NHWC:
    [B, g, H/g, g, W/g, C] permuted (0, 2, 4, 1, 3, 5) into windows of g x g tokens
    (five axis groups), a softmax over each window's tokens (so that the grouping
    matters), and the reverse permute (0, 3, 1, 4, 2, 5). Once an internal
    RecursionError in the writer (permute_blob)."""

    def forward(self, x):
        b, c, h, w = x.shape
        g = 2
        y = x.permute(0, 2, 3, 1)
        win = y.reshape(b, g, h // g, g, w // g, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c)
        win = torch.softmax(win * 1.5, dim=1)
        y = win.reshape(b, h // g, w // g, g, g, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, c)
        return y.permute(0, 3, 1, 2)


def test_maxvit_grid_partition_and_reverse(tmp_path: Path) -> None:
    art = check(GridAttentionPartition(), images((1, 8, 8, 12)), tmp_path, ops=("Transpose", "Softmax"))
    assert art.main.read_text().count("Permute") >= 2


class WindowQKV(nn.Module):
    """Swin/MobileViT attention: qkv reshaped to [B, N, 3, heads, d], permuted to
    [3, B, heads, N, d] (5 axes larger than 1) and unbound along axis 0."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.heads = heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return (torch.softmax(q @ k.transpose(-2, -1), -1) @ v).sum(1)


def test_split_of_a_five_axis_qkv(tmp_path: Path) -> None:
    # Four windows in the batch axis, as timm's Swin partitions them.
    check(WindowQKV(), images((4, 9, 16)), tmp_path, ops=("Split",))


class TokenBatchNorm(nn.Module):
    """LeViT's Linear + BatchNorm1d over a [tokens, C] matrix (axis 0 is tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 12)
        self.bn = nn.BatchNorm1d(12)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        b, n, _ = x.shape
        return self.bn(self.fc(x).flatten(0, 1)).reshape(b, n, -1)


def test_batchnorm_over_a_token_matrix(tmp_path: Path) -> None:
    check(TokenBatchNorm(), images((1, 10, 8)), tmp_path, ops=("BatchNormalization",))


class PositionsFromIds(nn.Module):
    """RoBERTa's embeddings: positions are computed from ``input_ids != pad`` (ids read
    as values) and looked up in a second table; token types gathered from a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(40, 8)
        self.pos = nn.Embedding(20, 8)
        self.register_buffer("types", torch.zeros(1, 16, dtype=torch.long))
        self.type_emb = nn.Embedding(2, 8)

    def forward(self, input_ids):
        mask = input_ids.ne(1).int()
        positions = torch.cumsum(mask, dim=1) * mask + 1
        types = torch.gather(self.types.expand(input_ids.shape[0], -1), 1, positions.long())
        return self.word(input_ids) + self.pos(positions.long()) + self.type_emb(types)


def test_ids_read_as_values_and_positions_looked_up(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [{"input_ids": rng.integers(2, 40, (1, 10)).astype(np.int64)} for _ in range(2)]
    samples[1]["input_ids"][0, 7:] = 1  # padding
    art = check(PositionsFromIds(), samples, tmp_path)
    assert art.main.read_text().count("\nEmbed ") == 1


class DeformableSample(nn.Module):
    """RT-DETR's deformable attention samples value maps at predicted locations."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        grid = torch.tanh(self.offsets(x)).permute(0, 2, 3, 1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_grid_sample_bilinear(tmp_path: Path) -> None:
    art = check(DeformableSample(), images((1, 4, 6, 7)), tmp_path, ops=("GridSample",))
    assert "GridSample" in art.main.read_text()


class TopKHead(nn.Module):
    def forward(self, x):
        scores = x.mean(-1)
        _, idx = torch.topk(scores, 3, dim=1)
        return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def test_topk_selection_is_refused_with_the_list(tmp_path: Path) -> None:
    model = export(TopKHead(), images((1, 10, 4)))
    with pytest.raises(UnsupportedOpsError) as e:
        convert_and_run(model, images((1, 10, 4)), tmp_path / "out")
    # TopK has no ncnn layer; the nodes after it are not listed again.
    assert "TopK x1" in str(e.value) and "Nothing was written" in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class WindowsInBatch(nn.Module):
    """Windows in the batch axis, a convolution, then a reduction over that axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        b, c, h, w = x.shape
        win = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, c, h // 2, w // 2)
        return self.conv(win).sum(0, keepdim=True)


def test_windows_moved_into_the_batch_axis_convert(tmp_path: Path) -> None:
    check(WindowsInBatch(), images((1, 4, 8, 8)), tmp_path)


class VolumesInBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x.reshape(2, 2, 4, 4, 4)).sum(0, keepdim=True)


def test_a_batch_of_3d_convolutions_is_refused_clearly(tmp_path: Path) -> None:
    sample = images((1, 4, 4, 4, 4))
    with pytest.raises(ConversionError) as e:
        convert_and_run(export(VolumesInBatch(), sample), sample, tmp_path / "out")
    assert "a batch of 2 3-D convolutions" in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class Shuffle(nn.Module):
    """ShuffleNetV2's channel shuffle (view, transpose, view) between two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.b(y)


def test_channel_shuffle_is_one_shufflechannel_layer(tmp_path: Path) -> None:
    text = check(Shuffle(), images((1, 3, 6, 5)), tmp_path).main.read_text()
    assert "ShuffleChannel" in text and "Permute" not in text


class CrossAttention(nn.Module):
    """CrossViT-style: one class-token query attends to all tokens (projections the
    MultiHeadAttention matcher does not take) -> ncnn SDPA."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.heads = heads

    def forward(self, x):
        b, n, c = x.shape
        q = self.q(x[:, :1]).reshape(b, 1, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        return (a.softmax(-1) @ v).transpose(1, 2).reshape(b, 1, c)


def test_cross_attention_core_becomes_sdpa(tmp_path: Path) -> None:
    text = check(CrossAttention(), images((1, 7, 16)), tmp_path).main.read_text()
    assert "SDPA" in text and "Softmax" not in text


def test_masked_text_encoder_attention_is_fused(tmp_path: Path) -> None:
    # The NaN guard after the softmax is dropped, so the block becomes one layer.
    rng = np.random.default_rng(1)
    mask = np.ones((1, 12), np.int64)
    mask[:, 9:] = 0
    sample = {"input_ids": rng.integers(0, 50, (1, 12)).astype(np.int64), "attention_mask": mask}
    text = check(MaskedAttention(), [sample], tmp_path).main.read_text()
    assert "MultiHeadAttention" in text or "SDPA" in text
    assert "Softmax" not in text


class ShiftedWindowAttention(nn.Module):
    """torchvision's Swin: windows in the batch axis, a relative position bias per head,
    then a shift mask per window added in another shape; patch merging takes x[1::2]."""

    def __init__(self, dim: int = 8, heads: int = 2, tokens: int = 4, windows: int = 3) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Parameter(torch.randn(1, heads, tokens, tokens))
        self.register_buffer("shift", (torch.rand(1, windows, 1, tokens, tokens) > 0.5).float() * -100.0)
        self.heads, self.windows = heads, windows

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = (q * 0.5) @ k.transpose(-2, -1) + self.bias
        a = (a.view(1, self.windows, self.heads, n, n) + self.shift).view(-1, self.heads, n, n)
        y = (a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return y[:, 1::2] + y[:, 0::2]


def test_shifted_window_attention_with_two_constant_masks(tmp_path: Path) -> None:
    text = check(ShiftedWindowAttention(), images((3, 4, 8)), tmp_path).main.read_text()
    assert "SDPA" in text and "Softmax" not in text and "Concat" not in text


class CrossCovarianceAttention(nn.Module):
    """XCiT/EdgeNeXt: q and k L2-normalised over tokens (F.normalize exports
    ReduceL2, Clip, Expand, Div), then a channel-by-channel attention."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.heads = heads

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1).unbind(0)
        q, k = nn.functional.normalize(q, dim=-1), nn.functional.normalize(k, dim=-1)
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        return (a @ v).permute(0, 3, 1, 2).reshape(b, n, c)


def test_normalize_divides_without_the_expanded_copy(tmp_path: Path) -> None:
    text = check(CrossCovarianceAttention(), images((1, 10, 16)), tmp_path, ops=("Expand",)).main.read_text()
    assert text.count("Reduction") == 2 and "MemoryData" not in text
    assert sum(line.startswith("BinaryOp") for line in text.splitlines()) == 2  # the two Divs


class DeformableSampling(nn.Module):
    """RT-DETR's multi-scale deformable attention: each head's value map sampled by
    its own grid, the heads in GridSample's batch axis."""

    def __init__(self, dim: int = 16, heads: int = 4, hw: tuple[int, int] = (5, 6), points: int = 3) -> None:
        super().__init__()
        self.loc = nn.Linear(dim, heads * points * 2)
        self.heads, self.hw, self.points = heads, hw, points

    def forward(self, x):
        _, n, d = x.shape
        (h, w), m = self.hw, self.heads
        value = x.view(1, h, w, m, d // m).permute(0, 3, 4, 1, 2).reshape(m, d // m, h, w)
        grid = torch.tanh(self.loc(x)).view(1, n, m, self.points, 2)
        grid = grid.permute(0, 2, 1, 3, 4).reshape(m, n, self.points, 2)
        out = nn.functional.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.sum(-1).reshape(1, d, n).transpose(1, 2)


def test_grid_sample_with_heads_in_the_batch_axis(tmp_path: Path) -> None:
    text = check(DeformableSampling(), images((1, 30, 16)), tmp_path, ops=("GridSample",)).main.read_text()
    assert sum(line.startswith("GridSample") for line in text.splitlines()) == 4  # one per head


class QuerySelection(nn.Module):
    """RT-DETR's head after its query selection: computed indices pick rows of computed
    features (Gather) and boxes through an expanded index (torch.gather ->
    GatherElements); class ids come from integer floor division and modulo."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.score, self.box = nn.Linear(dim, 1), nn.Linear(dim, 4)
        self.classes = classes

    def forward(self, x):
        n = x.shape[1]
        flat = (torch.sigmoid(self.score(x))[..., 0] * (n * self.classes - 1)).long()
        q = torch.div(flat, self.classes, rounding_mode="floor")
        cls = flat % self.classes
        feats = x[0, q[0]]
        boxes = torch.gather(self.box(x), 1, q.unsqueeze(-1).expand(-1, -1, 4))
        return torch.cat([boxes, feats[None, :, :4], cls.unsqueeze(-1).float(), q.unsqueeze(-1).float()], -1)


def test_rows_picked_by_computed_indices(tmp_path: Path) -> None:
    check(QuerySelection(), images((1, 10, 8)), tmp_path, ops=("GatherElements", "Mod", "Div"))


class TanhGelu(nn.Module):
    """GPT-2's gelu_new written out (transformers' NewGELUActivation)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.fc(x)
        return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))


def test_tanh_gelu_is_one_layer(tmp_path: Path) -> None:
    text = check(TanhGelu(), images((1, 5, 16)), tmp_path, ops=("Tanh", "Pow")).main.read_text()
    gelu = [line for line in text.splitlines() if line.startswith("GELU")]
    assert len(gelu) == 1 and " 0=1" in gelu[0]
    assert "TanH" not in text and "BinaryOp" not in text


class WindowConvolutions(nn.Module):
    """EfficientViT-M's local window attention: windows moved into the batch axis,
    then a depthwise 3x3 and a plain 1x1 convolution per window."""

    def __init__(self, c: int = 8, win: int = 3) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, 2 * c, 1)
        self.win = win

    def forward(self, x):
        _, c, h, w = x.shape
        s = self.win
        t = x.view(1, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, s, s)
        t = self.pw(torch.relu(self.dw(t)))
        return t.view(1, h // s, w // s, 2 * c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(1, 2 * c, h, w)


def test_convolutions_of_windows_in_the_batch_axis(tmp_path: Path) -> None:
    text = check(WindowConvolutions(), images((1, 8, 6, 9)), tmp_path).main.read_text()
    assert "ConvolutionDepthWise" in text


class FocalModulation(nn.Module):
    """FocalNet's modulation: the global context, pooled to (C, 1, 1), is gated by one
    channel of the input, (1, H, W) — an outer broadcast, not a per-channel one."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.f = nn.Conv2d(c, 2 * c + 2, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.h = nn.Conv2d(c, c, 1)
        self.c = c

    def forward(self, x):
        q, ctx, gates = torch.split(self.f(x), (self.c, self.c, 2), 1)
        ctx = F.gelu(self.dw(ctx))
        ctx_all = ctx * gates[:, :1]
        ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))
        return q * self.h(ctx_all + ctx_global * gates[:, 1:])


def test_pooled_context_times_a_one_channel_gate(tmp_path: Path) -> None:
    check(FocalModulation(), images((1, 8, 7, 5)), tmp_path, ops=("ReduceMean",))


class PooledTimesPlane(nn.Module):
    def forward(self, x):
        return x[:, :4].mean((2, 3), keepdim=True) * x[:, 4:5] + x[:, 5:6].amax((2, 3), keepdim=True)


def test_outer_broadcast_of_a_pooled_vector_and_a_plane(tmp_path: Path) -> None:
    check(PooledTimesPlane(), images((1, 6, 4, 9)), tmp_path)


class AttentionPoolingHead(nn.Module):
    """SigLIP's head: a learned probe attends over the tokens (its query projection
    is folded into a constant by the exporter)."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        out = self.attn(self.probe.expand(x.shape[0], -1, -1), x, x, need_weights=False)[0]
        return self.norm(out)[:, 0]


def test_attention_with_a_constant_learned_query(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 10, 32)).astype(np.float32)} for _ in range(2)]
    text = check(AttentionPoolingHead(), samples, tmp_path).main.read_text()
    assert "SDPA" in text or "MultiHeadAttention" in text


class MaskUnitPooling(nn.Module):
    """Hiera's query pooling: the query viewed with more axes than a Mat, max over the
    stride axis."""

    def __init__(self, heads: int = 2, stride: int = 4) -> None:
        super().__init__()
        self.heads, self.stride = heads, stride

    def forward(self, x):
        b, _, c = x.shape
        q = x.view(b, self.stride, -1, self.heads, 3, c // self.heads).permute(0, 3, 4, 1, 2, 5)
        return q.amax(dim=3) + q.mean(dim=(1, 3)).unsqueeze(1)


def test_reduction_over_more_axes_than_a_mat(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 48, 8)).astype(np.float32)} for _ in range(2)]
    check(MaskUnitPooling(), samples, tmp_path, ops=("ReduceMax",))


def _rel_logits_1d(q, rel_k, permute_mask):
    b, h, w, _ = q.shape
    x = (q @ rel_k.transpose(-1, -2)).reshape(-1, w, 2 * w - 1)
    x = F.pad(F.pad(x, [0, 1]).flatten(1), [0, w - 1]).reshape(-1, w + 1, 2 * w - 1)[:, :w, w - 1 :]
    return x.reshape(b, h, 1, w, w).expand(-1, -1, h, -1, -1).permute(permute_mask)


class RelPosLogits(nn.Module):
    """BoTNet's relative-position logits (timm RelPosEmb): 5-D expands and sums with the
    heads in the batch axis, then one (B, HW, HW) reshape."""

    def __init__(self, size: int = 4, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.rel_w = nn.Parameter(torch.randn(2 * size - 1, dim) * 0.5)
        self.rel_h = nn.Parameter(torch.randn(2 * size - 1, dim) * 0.5)
        self.size, self.dim, self.heads = size, dim, heads

    def forward(self, x):
        s = self.size
        q = x.reshape(self.heads, s, s, self.dim)
        lw = _rel_logits_1d(q, self.rel_w, (0, 1, 3, 2, 4))
        lh = _rel_logits_1d(q.transpose(1, 2), self.rel_h, (0, 3, 1, 4, 2))
        return torch.softmax((lh + lw).reshape(self.heads, s * s, s * s), -1)


def test_relative_position_logits_with_five_axes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 32, 8)).astype(np.float32)} for _ in range(2)]
    check(RelPosLogits(), samples, tmp_path, ops=("Expand",))


class UnfoldMixer(nn.Module):
    """VOLO / HaloNet style: windows taken with F.unfold (written as Gathers of window
    rows by the exporter, 6-D), mixed by a Linear, folded back with a sum."""

    def __init__(self, c: int = 4, k: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(k * k, k * k)
        self.c, self.k = c, k

    def forward(self, x):
        cols = F.unfold(x, self.k, padding=1, stride=3)  # (1, C*k*k, L)
        b, _, n = cols.shape
        cols = self.lin(cols.view(b, self.c, self.k * self.k, n).transpose(-1, -2))
        return cols.sum(-1) + x.unfold(2, 3, 3).unfold(3, 3, 3).amax((-1, -2)).flatten(2)


def test_unfold_written_as_gathers(tmp_path: Path) -> None:
    check(UnfoldMixer(), images((1, 4, 9, 9)), tmp_path, ops=("Gather",))


class RelPosIntoScores(nn.Module):
    """MViTv2's relative positions added to the scores in place, ``attn[:, :, s:, s:] =
    ...`` (ScatterND with constant index tuples): s = 0 writes the whole tensor, s = 1
    (a class token) a block inside it."""

    def __init__(self, skip: int) -> None:
        super().__init__()
        self.skip = skip
        self.rel = nn.Parameter(torch.randn(2, 6 - skip, 6 - skip) * 0.5)

    def forward(self, x):
        attn = (x @ x.transpose(-1, -2)).reshape(1, 2, 6, 6)
        s = self.skip
        attn[:, :, s:, s:] = attn[:, :, s:, s:] + self.rel
        return torch.softmax(attn, -1)


@pytest.mark.parametrize("skip", [0, 1])
def test_scores_written_in_place_as_scatternd(tmp_path: Path, skip: int) -> None:
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((2, 6, 4)).astype(np.float32)} for _ in range(2)]
    check(RelPosIntoScores(skip), samples, tmp_path, ops=("ScatterND",))


class RelativeShift(nn.Module):
    """DeBERTa's disentangled attention: scores against relative positions gathered back
    to absolute ones, ``torch.gather(scores, -1, o + a*i + b*j)`` (constant indices)."""

    def __init__(self, a: int, b: int, heads: int, n: int = 16, rows: int = 6) -> None:
        super().__init__()
        i = torch.arange(rows)[:, None]
        j = torch.arange(rows)[None, :]
        o = 0 if b == 1 else n - 1 - (rows - 1) * max(a, 0)
        o = o if a >= 0 else (rows - 1) * -a
        self.register_buffer("idx", (o + a * i + b * j).clamp(0, n - 1))
        self.heads, self.n = heads, n

    def forward(self, q, k):
        scores = q @ k.transpose(-1, -2)  # (heads, rows, n)
        idx = self.idx.expand(self.heads, -1, -1)
        return torch.softmax(torch.gather(scores, -1, idx), -1)


@pytest.mark.parametrize("a, b, heads", [(1, -1, 2), (-1, 1, 2), (1, 1, 1), (1, 1, 2), (0, 1, 1)])
def test_relative_positions_gathered_back_to_absolute(tmp_path: Path, a: int, b: int, heads: int) -> None:
    rng = np.random.default_rng(0)
    samples = [{"q": rng.standard_normal((heads, 6, 8)).astype(np.float32),
                "k": rng.standard_normal((heads, 16, 8)).astype(np.float32)} for _ in range(2)]  # fmt: skip
    m = RelativeShift(a, b, heads)
    assert int(m.idx.min()) >= 0 and int(m.idx.max()) < 16
    check(m, samples, tmp_path, ops=("GatherElements",))


def _conv_bn(c: int, k: int, groups: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c))


class TrainFormRepBlocks(nn.Module):
    """MobileOne (depthwise, then pointwise) and RepVGG blocks as timm builds them before
    ``reparameterize()``: parallel conv+BN branches, a BN identity and a 1x1 scale branch,
    summed."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.dw = nn.ModuleList([_conv_bn(c, 3, c), _conv_bn(c, 3, c), _conv_bn(c, 1, c), nn.BatchNorm2d(c)])
        self.pw = nn.ModuleList([_conv_bn(c, 1, 1), _conv_bn(c, 1, 1), nn.BatchNorm2d(c)])
        self.vgg = nn.ModuleList([_conv_bn(c, 3, 1), _conv_bn(c, 1, 1), nn.BatchNorm2d(c)])
        g = torch.Generator().manual_seed(1)
        for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            bn.weight.data.copy_(torch.randn(c, generator=g))
            bn.bias.data.copy_(torch.randn(c, generator=g) * 0.2)

    def forward(self, x):
        for branches in (self.dw, self.pw, self.vgg):
            out = 0
            for b in branches:
                out = out + b(x)
            x = F.relu(out)
        return x


def test_train_form_reparameterizable_blocks_become_one_conv_each(tmp_path: Path) -> None:
    module = TrainFormRepBlocks().eval()
    samples = images((1, 16, 12, 10))
    model = export(module, samples)
    assert [n.op_type for n in model.graph.node].count("Conv") == 3
    assert not any(n.op_type in ("Add", "BatchNormalization") for n in model.graph.node)
    with torch.no_grad():
        refs = [{"out": module(torch.from_numpy(s["x"])).numpy()} for s in samples]  # torch is the reference
    outs, art = convert_and_run(model, samples, tmp_path / "out")
    comp = compare_outputs(refs, outs, default_tolerance("fp32"))
    assert comp.passed, comp.summary()
    layers = [line.split()[0] for line in art.main.read_text().splitlines()[2:]]
    assert layers.count("Convolution") + layers.count("ConvolutionDepthWise") == 3
    assert "BinaryOp" not in layers and "BatchNorm" not in layers
