"""mconv's own TFLite writer against onnx2tf on the same ONNX (run by hand).

Per model: conversion wall time and peak memory (each converter in its own child
process, peak RSS from ``wait4``), artifact size, latency in LiteRT's interpreter
(same threads, runs interleaved A/B so load on a shared machine hits both alike)
and the error against onnxruntime (max abs / max |ref|, cosine).

Models: ``resnet18`` and ``mobilenetv2`` (torch definitions below, seeded random
weights, exported at opset 17; no torchvision needed), or paths to .onnx files.

onnx2tf needs TensorFlow; it must live in a separate venv (its pins replace numpy,
onnx, onnxruntime and protobuf), given with ``--onnx2tf-python``; without it only
mconv's rows are printed. onnx2tf gets ``-k INPUT`` so its model keeps the NCHW input
(the same feeds as onnxruntime), and ``-n`` (no optimisation pass with onnxsim, which
mconv's passes replace) is NOT used: both run their default pipelines.

Usage: .venv/bin/python bench/litert.py resnet18 mobilenetv2 [--onnx2tf-python /work/venv-onnx2tf/bin/python]
       [--threads 2] [--runs 30] [--json bench/results/litert.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def resnet18():
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def mobilenetv2():
    from torch import nn

    def cbr(cin, cout, k=3, s=1, g=1):
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

    class Inverted(nn.Module):
        def __init__(self, cin, cout, s, t):
            super().__init__()
            hid = cin * t
            body = (cbr(cin, hid, 1) if t != 1 else []) + cbr(hid, hid, 3, s, hid)
            self.body = nn.Sequential(*body, nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.res = s == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    layers = cbr(3, 32, 3, 2)
    cin = 32
    for t, c, n, s in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ):
        for i in range(n):
            layers.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [*cbr(cin, 1280, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000)]
    return nn.Sequential(*layers)


def export(name: str, path: Path) -> Path:
    import warnings

    import torch

    torch.manual_seed(0)
    net = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}[name]().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(1, 3, 224, 224),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    return path


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MiB, exit code, stderr tail) of ``cmd`` in a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    err = proc.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, ru.ru_maxrss / 1024, proc.returncode, err[-400:]


MCONV_CONVERT = """
import sys, onnx
from mconv.modelio import load_onnx
from mconv.passes import optimize
from mconv.targets import BuildOptions, get_target
model, _ = optimize(load_onnx(sys.argv[1]))
get_target("litert").write(model, __import__("pathlib").Path(sys.argv[2]), "model", BuildOptions())
"""


def convert_mconv(src: Path, out: Path) -> dict:
    wall, rss, code, err = timed([sys.executable, "-c", MCONV_CONVERT, str(src), str(out)])
    return {
        "wall_s": wall,
        "peak_mib": rss,
        "ok": code == 0,
        "error": err if code else "",
        "file": str(out / "model.tflite"),
    }


def convert_onnx2tf(python: str, src: Path, out: Path, input_name: str) -> dict:
    cmd = [python, "-m", "onnx2tf", "-i", str(src), "-o", str(out), "-k", input_name]
    wall, rss, code, err = timed(cmd, {"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    files = sorted(out.glob("*_float32.tflite"))
    ok = code == 0 and bool(files)
    return {
        "wall_s": wall,
        "peak_mib": rss,
        "ok": ok,
        "error": "" if ok else err,
        "file": str(files[0]) if files else "",
    }


def interpreter(path: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    it.allocate_tensors()
    return it


def run_once(it, x: np.ndarray) -> np.ndarray:
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], x if list(d["shape"]) == list(x.shape) else x.transpose(0, 2, 3, 1).copy())
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def measure(files: dict[str, str], ref: np.ndarray, x: np.ndarray, threads: int, runs: int) -> dict[str, dict]:
    its = {k: interpreter(f, threads) for k, f in files.items()}
    out = {}
    for k, it in its.items():
        y = run_once(it, x).reshape(ref.shape)
        a, b = ref.ravel().astype(np.float64), y.ravel().astype(np.float64)
        out[k] = {
            "rel": float(np.abs(a - b).max() / np.abs(a).max()),
            "cos": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
            "ms": [],
            "size_mb": Path(files[k]).stat().st_size / 1e6,
        }
        for _ in range(3):
            run_once(it, x)
    for _ in range(runs):  # interleaved
        for k, it in its.items():
            t0 = time.perf_counter()
            run_once(it, x)
            out[k]["ms"].append((time.perf_counter() - t0) * 1e3)
    for v in out.values():
        v["median_ms"] = float(np.median(v.pop("ms")))
    return out


def bench_model(name: str, args, work: Path) -> list[dict]:
    import onnxruntime as ort

    src = Path(name) if name.endswith(".onnx") else export(name, work / f"{name}.onnx")
    model = onnx.load(src)
    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    ref = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, {inp.name: x})[0]
    conv = {"mconv": convert_mconv(src, work / f"{src.stem}_mconv")}
    if args.onnx2tf_python:
        conv["onnx2tf"] = convert_onnx2tf(args.onnx2tf_python, src, work / f"{src.stem}_onnx2tf", inp.name)
    files = {k: c["file"] for k, c in conv.items() if c["ok"]}
    metrics = measure(files, ref, x, args.threads, args.runs) if files else {}
    return [{"model": src.stem, "converter": k, **c, **metrics.get(k, {})} for k, c in conv.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--onnx2tf-python", default="", help="python of a venv with tensorflow + onnx2tf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", default="")
    ap.add_argument(
        "--workdir", default="", help="keep the ONNX files and artifacts here (default: a temporary folder)"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            rows += bench_model(name, args, work)
    print("| model | converter | convert s | peak MiB | size MB | latency ms | rel err | cosine |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["ok"]:
            print(f"| {r['model']} | {r['converter']} | failed: {r['error'].strip().splitlines()[-1:]} |")
            continue
        print(
            f"| {r['model']} | {r['converter']} | {r['wall_s']:.1f} | {r['peak_mib']:.0f} | {r['size_mb']:.1f} | "
            f"{r['median_ms']:.1f} | {r['rel']:.2e} | {r['cos']:.6f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
