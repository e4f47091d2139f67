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

Usage: python bench/ncnn_vs_pnnx.py [--threads 2] [--runs 20] [--procs 6] [--control] [--only vit,swin]
"""

from __future__ import annotations

import argparse
import json
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

from mconv.targets.base import BuildOptions
from mconv.targets.ncnn import NcnnTarget
from mconv.targets.ncnn.conformance import run_onnxruntime
from mconv.targets.ncnn.runner import import_ncnn

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


def load_net(param: Path, binf: Path, threads: int):
    ncnn = import_ncnn()
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.opt.num_threads = threads
    if net.load_param(str(param)) != 0 or net.load_model(str(binf)) != 0:
        raise RuntimeError(f"ncnn cannot load {param.name} (see ncnn's message above)")
    return net


def run_once(net, inp: str, out: str, x: np.ndarray) -> tuple[np.ndarray, float]:
    ncnn = import_ncnn()
    t0 = time.perf_counter()
    with net.create_extractor() as ex:
        ex.input(inp, ncnn.Mat(x).clone())
        ret, mat = ex.extract(out)
        if ret != 0:
            raise RuntimeError(f"extract {out} failed ({ret})")
        y = np.array(mat)
    return y, time.perf_counter() - t0


def timed(nets: dict, x: np.ndarray, runs: int) -> tuple[dict, dict]:
    """Median latency (ms) per net in this process; runs interleave so load on the
    machine affects both sides alike."""
    outs, times = {}, {k: [] for k in nets}
    for i in range(runs + 2):
        for k, (net, inp, out) in nets.items():
            y, dt = run_once(net, inp, out, x)
            outs[k] = y
            if i >= 2:
                times[k].append(dt)
    return outs, {k: float(np.median(v)) * 1000 for k, v in times.items()}


def time_child(spec_path: str) -> int:
    """Child mode: load the nets in the order given, time them, print JSON."""
    spec = json.loads(Path(spec_path).read_text())
    x = np.load(spec["input"])
    nets = {k: (load_net(Path(p), Path(b), spec["threads"]), i, o) for k, p, b, i, o in spec["nets"]}
    print(json.dumps(timed(nets, x, spec["runs"])[1]))
    return 0


def timed_fresh(specs: dict, x: np.ndarray, threads: int, runs: int, procs: int, work: Path) -> tuple[dict, float]:
    """Latency per side measured in ``procs`` fresh processes that alternate which
    side is loaded first, and the mconv/pnnx ratio as the geometric mean of the
    per-process ratios.

    On this machine the net loaded first in a process runs ~4% slower than one loaded
    later, also for two copies of the same artifact, so a fixed load order would bias
    every ratio by that much.
    """
    np.save(work / "input.npy", x)
    names = list(specs)
    per: dict[str, list[float]] = {k: [] for k in names}
    ratios = []
    for i in range(procs):
        order = names if i % 2 == 0 else names[::-1]
        spec = {"input": str(work / "input.npy"), "threads": threads, "runs": runs,
                "nets": [[k, *map(str, specs[k])] for k in order]}  # fmt: skip
        (work / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, __file__, "--time-child", str(work / "spec.json")],
                              capture_output=True, text=True, check=True)  # fmt: skip
        ms = json.loads(proc.stdout.strip().splitlines()[-1])
        for k in names:
            per[k].append(ms[k])
        if len(names) == 2:
            ratios.append(ms[names[0]] / ms[names[1]])
    ratio = float(np.exp(np.mean(np.log(ratios)))) if ratios else math.nan
    return {k: float(np.median(v)) for k, v in per.items()}, ratio


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
    nets: dict = {}
    paths: dict = {}  # side -> (param, bin, input blob, output blob)
    try:
        t0 = time.perf_counter()
        art = NcnnTarget().write(proto, work / "mconv", name, BuildOptions())
        row["mconv_conv_s"] = time.perf_counter() - t0
        ob = art.meta["outputs"][0]["blob"]
        paths["mconv"] = (art.main, art.main.with_suffix(".bin"), "input", ob)
        nets["mconv"] = (load_net(art.main, art.main.with_suffix(".bin"), threads), "input", ob)
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
        try:
            paths["pnnx"] = (param, param.with_suffix(".bin"), "in0", "out0")
            nets["pnnx"] = (load_net(param, param.with_suffix(".bin"), threads), "in0", "out0")
        except Exception as e:
            row.update(pnnx_ok=False, pnnx_err=f"{type(e).__name__}: {str(e)[:80]}")
    for k in list(nets):  # a side that loads but cannot run counts as not converted
        try:
            run_once(nets[k][0], nets[k][1], nets[k][2], nc_in)
        except Exception as e:
            row.update({f"{k}_ok": False, f"{k}_err": f"{type(e).__name__}: {str(e)[:80]}"})
            del nets[k]
    outs = {k: run_once(*nets[k], nc_in)[0] for k in nets}
    del nets  # timing happens in fresh processes
    ms, row["ratio"] = timed_fresh({k: paths[k] for k in outs}, nc_in, threads, runs, procs, work)
    for k in outs:
        row.update({f"{k}_ok": True, f"{k}_rel": rel_err(ref, outs[k]), f"{k}_ms": ms[k]})
    if control and "pnnx" in outs:  # the same artifact against itself: the noise floor
        row["control"] = timed_fresh({"a": paths["pnnx"], "b": paths["pnnx"]}, nc_in, threads, runs, procs, work)[1]
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
    ap.add_argument("--time-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time_child:
        return time_child(args.time_child)
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
