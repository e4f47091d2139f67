"""mconv's ncnn writer vs pnnx on real architectures (run by hand, never a test).

Builds seeded PyTorch models (ResNet-18-like, MobileNetV2-like, ViT, Swin-style
windowed attention, a small U-Net-like segmenter, a Transformer encoder, a
ConvNeXt-style block stack, a text encoder on int64 token ids), exports each to ONNX (opset 17, dynamo=False),
converts it with mconv (``NcnnTarget.write``) and with pnnx (``pnnx model.onnx
inputshape=[...]``), runs both with ncnn (same threads, fp32, vulkan off) and
prints: converted or not, max relative error vs onnxruntime, median ncnn latency
of each and the mconv/pnnx ratio, and conversion wall time of each.

Latency is measured in fresh processes (``--procs``, default 6) that alternate which
artifact is loaded first; the ratio is the geometric mean of the per-process ratios and
``ctrl`` (with ``--control``) is pnnx's artifact timed against itself the same way, the
noise floor of the ratio.

Needs pnnx (the bench venv has it: `make bench-venv`). Usage:
    python bench/ncnn_vs_pnnx.py [--threads 2] [--runs 20] [--procs 6] [--control] [--only vit,swin]
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ncnn_timing import NetSpec, outputs_isolated, timed_fresh

from mconv.targets.base import BuildOptions
from mconv.targets.ncnn import NcnnTarget
from mconv.targets.ncnn.conformance import run_onnxruntime

# ----------------------------------------------------------------------------- models


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = _bn(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = _bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), _bn(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))  # fmt: skip
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvRes(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        mid = cin * t
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), _bn(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), _bn(cout),
        )  # fmt: skip

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip
        layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32), nn.ReLU6()]
        cin = 32
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvRes(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), _bn(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    def __init__(self, dim: int = 192, depth: int = 4, heads: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 197, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1000)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, win: int) -> None:
        super().__init__()
        self.heads, self.win = heads, win
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(heads, win * win, win * win) * 0.1)

    def forward(self, x):  # x: (nW, win*win, C)
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1) + self.bias
        x = (a.softmax(-1) @ v).transpose(1, 2).reshape(n, t, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, res: int, win: int = 7) -> None:
        super().__init__()
        self.res, self.win = res, win
        self.n1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, win)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):  # (1, H*W, C)
        b, _, c = x.shape
        r, w = self.res, self.win
        h = self.n1(x).view(b, r // w, w, r // w, w, c).permute(0, 1, 3, 2, 4, 5)
        h = self.attn(h.reshape(-1, w * w, c))
        h = h.view(b, r // w, r // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, r * r, c)
        x = x + h
        return x + self.mlp(self.n2(x))


class Swin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 96, 4, 4)
        self.s1 = nn.Sequential(SwinBlock(96, 3, 56), SwinBlock(96, 3, 56))
        self.merge = nn.Linear(4 * 96, 192)
        self.s2 = nn.Sequential(SwinBlock(192, 6, 28), SwinBlock(192, 6, 28))
        self.norm = nn.LayerNorm(192)
        self.head = nn.Linear(192, 1000)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = self.s1(x)
        x = x.view(1, 28, 2, 28, 2, 96).permute(0, 1, 3, 4, 2, 5).reshape(1, 784, 384)
        x = self.s2(self.merge(x))
        return self.head(self.norm(x).mean(1))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def cbr(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 1, 1), _bn(o), nn.ReLU())

        self.e1, self.e2, self.e3 = cbr(3, 16), cbr(16, 32), cbr(32, 64)
        self.d2, self.d1 = cbr(64 + 32, 32), cbr(32 + 16, 16)
        self.out = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(nn.functional.max_pool2d(a, 2))
        c = self.e3(nn.functional.max_pool2d(b, 2))
        up = nn.functional.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False)
        d = self.d2(torch.cat([up, b], 1))
        up = nn.functional.interpolate(d, scale_factor=2, mode="nearest")
        return self.out(self.d1(torch.cat([up, a], 1)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)

    def forward(self, x):
        return self.enc(x)


class TextEncoder(nn.Module):
    """Token ids in (int64): token + position embeddings, the encoder above, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(1000, 128)
        self.pos = nn.Parameter(torch.randn(1, 64, 128) * 0.5)
        self.enc = Encoder()
        self.head = nn.Linear(128, 2)

    def forward(self, ids):
        return self.head(self.enc(self.tok(ids) + self.pos))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 4, 4)
        self.s1 = nn.Sequential(*[ConvNeXtBlock(64) for _ in range(2)])
        self.down = nn.Conv2d(64, 128, 2, 2)
        self.s2 = nn.Sequential(*[ConvNeXtBlock(128) for _ in range(2)])
        self.head = nn.Linear(128, 1000)

    def forward(self, x):
        x = self.s2(self.down(self.s1(self.stem(x))))
        return self.head(x.mean((2, 3)))


MODELS = {
    "resnet18": (ResNet18, (1, 3, 224, 224)),
    "mobilenetv2": (MobileNetV2, (1, 3, 224, 224)),
    "vit": (ViT, (1, 3, 224, 224)),
    "swin": (Swin, (1, 3, 224, 224)),
    "unet": (UNet, (1, 3, 128, 128)),
    "transformer": (Encoder, (1, 64, 128)),
    "textenc": (TextEncoder, (1, 64)),  # int64 token ids
    "convnext": (ConvNeXt, (1, 3, 224, 224)),
}


TOKEN_MODELS = {"textenc"}


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A seeded model with non-trivial weights and BN statistics."""
    torch.manual_seed(0)
    cls, shape = MODELS[name]
    m = cls().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            if isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(torch.rand(mod.normalized_shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.normalized_shape, generator=g) * 0.1)
    return m, shape


# ----------------------------------------------------------------------------- running


def _net(param: Path, inp: str, out: str) -> NetSpec:
    return NetSpec(str(param), str(param.with_suffix(".bin")), {inp: "x"}, [out])


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64).ravel()
    got = got.astype(np.float64).ravel()
    if ref.size != got.size:
        return math.inf
    return float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30))


def bench_one(name: str, work: Path, threads: int, runs: int, procs: int, control: bool) -> dict:
    model, shape = build(name)
    ids = name in TOKEN_MODELS
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 1000, shape) if ids else rng.standard_normal(shape).astype(np.float32))
    onnx_path = work / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"])  # fmt: skip
    proto = onnx.load(str(onnx_path))
    xn = x.numpy()
    ref = run_onnxruntime(proto, [{"input": xn}])[0]["output"]
    # ncnn reads token ids as int32 bits in a float Mat (its Embed layer).
    nc_in = (xn.astype(np.int32).view(np.float32) if ids else xn).reshape(shape[1:])
    row: dict = {"model": name}
    nets: dict[str, NetSpec] = {}
    np.savez(work / "x.npz", x=np.ascontiguousarray(nc_in))
    try:
        t0 = time.perf_counter()
        art = NcnnTarget().write(proto, work / "mconv", name, BuildOptions())
        row["mconv_conv_s"] = time.perf_counter() - t0
        nets["mconv"] = _net(art.main, "input", art.meta["outputs"][0]["blob"])
    except Exception as e:
        row.update(mconv_ok=False, mconv_err=f"{type(e).__name__}: {str(e)[:80]}")
    pnnx = shutil.which("pnnx") or str(Path(sys.executable).parent / "pnnx")
    pdir = work / "pnnx"
    pdir.mkdir(exist_ok=True)
    src = pdir / f"{name}.onnx"
    shutil.copy(onnx_path, src)
    t0 = time.perf_counter()
    proc = subprocess.run([pnnx, str(src), f"inputshape=[{','.join(map(str, shape))}]{'i64' if ids else ''}"],
                          cwd=pdir, capture_output=True, text=True)  # fmt: skip
    row["pnnx_conv_s"] = time.perf_counter() - t0
    param = pdir / f"{name}.ncnn.param"
    if proc.returncode != 0 or not param.is_file():
        row.update(pnnx_ok=False, pnnx_err=(proc.stderr or proc.stdout).strip()[-80:])
    else:
        nets["pnnx"] = _net(param, "in0", "out0")
    outs = {}
    for k, net in nets.items():  # a side that does not load or run counts as not converted
        try:
            outs[k] = outputs_isolated(net, str(work / "x.npz"), threads)[0]
        except Exception as e:
            row.update({f"{k}_ok": False, f"{k}_err": f"{type(e).__name__}: {str(e)[:80]}"})
    for k in outs:
        row.update({f"{k}_ok": True, f"{k}_rel": rel_err(ref, outs[k])})
    if len(outs) == 2:
        t = timed_fresh(nets["mconv"], nets["pnnx"], str(work / "x.npz"), threads=threads, procs=procs, runs=runs)
        row.update(mconv_ms=t.ms["a"], pnnx_ms=t.ms["b"], ratio=t.ratio)
    if control and "pnnx" in outs:  # the same artifact against itself: the noise floor
        c = timed_fresh(nets["pnnx"], nets["pnnx"], str(work / "x.npz"), threads=threads, procs=procs, runs=runs)
        row["control"] = c.ratio
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'model':<12} {'mconv':>6} {'pnnx':>6} {'rel mconv':>10} {'rel pnnx':>10} {'ms mconv':>9} "
            f"{'ms pnnx':>8} {'ratio':>6} {'ctrl':>5} {'conv s mconv':>12} {'conv s pnnx':>11}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:

        def f(k, fmt, r=r):
            v = r.get(k)
            return format(v, fmt) if isinstance(v, float) else "-"

        ratio = r.get("ratio") if r.get("mconv_ok") and r.get("pnnx_ok") else None
        lines.append(
            f"{r['model']:<12} {'yes' if r.get('mconv_ok') else 'NO':>6} "
            f"{'yes' if r.get('pnnx_ok') else 'NO':>6} {f('mconv_rel', '10.2e')} "
            f"{f('pnnx_rel', '10.2e')} {f('mconv_ms', '9.2f')} {f('pnnx_ms', '8.2f')} "
            f"{format(ratio, '6.2f') if ratio else '     -'} {f('control', '5.2f')} {f('mconv_conv_s', '12.2f')} "
            f"{f('pnnx_conv_s', '11.2f')}"
        )
    for r in rows:
        for k in ("mconv_err", "pnnx_err"):
            if k in r:
                lines.append(f"  {r['model']} {k}: {r[k]}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--procs", type=int, default=6, help="fresh timing processes per model (even: orders alternate)")
    ap.add_argument("--control", action="store_true", help="also time pnnx's artifact against itself (noise floor)")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    names = [n for n in MODELS if not args.only or n in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mconv-bench-") as tmp:
        for n in names:
            d = Path(tmp) / n
            d.mkdir()
            rows.append(bench_one(n, d, args.threads, args.runs, args.procs, args.control))
            print(f"done {n}", file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
