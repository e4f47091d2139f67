"""PyTorch test modules at module level (so that a pickled nn.Module can be unpickled)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallCNN(nn.Module):
    """A ResNet-style CNN: conv/bn/relu, residual blocks, pooling, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer = nn.Sequential(Block(16), Block(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer(self.stem(x))), 1))


def seeded_small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    m = SmallCNN().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m


class TinyViT(nn.Module):
    """A ViT in miniature (patch embedding, pre-norm blocks with explicit
    MatMul -> Softmax -> MatMul attention, GELU MLPs, class token): the attention
    pattern of ViT/DeiT exports without their size."""

    def __init__(self, size: int = 32, patch: int = 8, dim: int = 64, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "n1": nn.LayerNorm(dim),
                        "qkv": nn.Linear(dim, 3 * dim),
                        "proj": nn.Linear(dim, dim),
                        "n2": nn.LayerNorm(dim),
                        "fc1": nn.Linear(dim, 4 * dim),
                        "fc2": nn.Linear(4 * dim, dim),
                    }
                )
            )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        b, t, d = x.shape
        h = self.heads
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["n1"](x)).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
            x = x + blk["proj"]((a @ v).transpose(1, 2).reshape(b, t, d))
            x = x + blk["fc2"](torch.nn.functional.gelu(blk["fc1"](blk["n2"](x))))
        return self.head(self.norm(x)[:, 0])


def tiny_vit_onnx(seed: int = 0, **kw):
    """:class:`TinyViT` (seeded) exported to an ONNX ModelProto with input ``image``."""
    import io

    import onnx

    torch.manual_seed(seed)
    net = TinyViT(**kw).eval()
    size = kw.get("size", 32)
    buf = io.BytesIO()
    torch.onnx.export(
        net, (torch.randn(1, 3, size, size),), buf, input_names=["image"], output_names=["logits"], dynamo=False
    )
    return onnx.load_from_string(buf.getvalue())


class TinyBert(nn.Module):
    """A BERT encoder in miniature, masked the way transformers' BERT is: token, position
    and type embeddings, LayerNorm, then blocks whose attention scores get
    ``where(mask, 0, finfo.min)`` added before the Softmax."""

    def __init__(self, vocab: int = 100, tokens: int = 16, dim: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(tokens, dim)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "q": nn.Linear(dim, dim),
                        "k": nn.Linear(dim, dim),
                        "v": nn.Linear(dim, dim),
                        "o": nn.Linear(dim, dim),
                        "n1": nn.LayerNorm(dim),
                        "fc1": nn.Linear(dim, 4 * dim),
                        "fc2": nn.Linear(4 * dim, dim),
                        "n2": nn.LayerNorm(dim),
                    }
                )
            )

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        x = self.norm(self.tok(input_ids) + self.pos(torch.arange(t)))
        h, d = self.heads, x.shape[-1] // self.heads
        mask = attention_mask[:, None, None, :].bool()
        bias = torch.where(mask, torch.tensor(0.0), torch.tensor(torch.finfo(torch.float32).min))

        def split(y):
            return y.reshape(b, t, h, d).transpose(1, 2)

        for blk in self.blocks:
            s = split(blk["q"](x)) @ split(blk["k"](x)).transpose(-1, -2) / d**0.5 + bias
            a = (torch.softmax(s, dim=-1) @ split(blk["v"](x))).transpose(1, 2).reshape(b, t, h * d)
            x = blk["n1"](x + blk["o"](a))
            x = blk["n2"](x + blk["fc2"](torch.nn.functional.gelu(blk["fc1"](x))))
        return x


def tiny_bert_onnx(seed: int = 0, tokens: int = 16, **kw):
    """:class:`TinyBert` (seeded) as ONNX with int64 inputs ``input_ids`` and ``attention_mask``."""
    import io

    import onnx

    torch.manual_seed(seed)
    net = TinyBert(tokens=tokens, **kw).eval()
    ids = torch.randint(0, 100, (1, tokens))
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (ids, torch.ones(1, tokens, dtype=torch.int64)),
        buf,
        input_names=["input_ids", "attention_mask"],
        output_names=["hidden"],
        dynamo=False,
    )
    return onnx.load_from_string(buf.getvalue())
