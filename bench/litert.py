"""mconv's own TFLite writer against onnx2tf on the same ONNX (run by hand).

Per model: conversion wall time and peak memory (each converter in its own child
process, peak RSS from ``wait4``), artifact size, latency in LiteRT's interpreter
(same threads, runs interleaved A/B so load on a shared machine hits both alike)
and the error against onnxruntime (max abs / max |ref|, cosine).

Models: the architectures of bench/openvino.py (``resnet18``, ``mobilenet_v2``,
``efficientnet_b0``, ``vit_ti16``; seeded random weights, opset 17, no torchvision), or
paths to .onnx files.

onnx2tf needs TensorFlow; it must live in a separate venv (its pins replace numpy,
onnx, onnxruntime and protobuf), given with ``--onnx2tf-python``; without it only
mconv's rows are printed. onnx2tf gets ``-k INPUT`` so its model keeps the NCHW input
(the same feeds as onnxruntime), and ``-n`` (no optimisation pass with onnxsim, which
mconv's passes replace) is NOT used: both run their default pipelines.

Usage: .venv/bin/python bench/litert.py resnet18 mobilenet_v2 [--onnx2tf-python /work/venv-onnx2tf/bin/python]
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


def _architectures():
    """bench/openvino.py's torch definitions (loaded by path: its name would shadow the
    openvino package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_openvino", Path(__file__).with_name("openvino.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export(name: str, path: Path) -> Path:
    """One of bench/openvino.py's architectures (seeded random weights, BatchNorm
    statistics measured, no training) as ONNX with input ``image``."""
    arch = _architectures()
    if name not in arch.MODELS:
        raise SystemExit(f"unknown model {name!r}: give one of {', '.join(arch.MODELS)} or an .onnx path")
    net, _ = arch.build_torch(name, steps=0)
    onnx.save(arch.export_onnx(net), path)
    return path


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MiB, exit code, stderr tail) of ``cmd`` in a child process.

    The peak comes from ``/usr/bin/time -f %M`` where it exists: a child forked from this
    (large) process would report at least this process's RSS at the fork as its peak.
    """
    gnu_time = Path("/usr/bin/time")
    full = [str(gnu_time), "-f", "mconv-peak-kb %M", *cmd] if gnu_time.is_file() else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    err = proc.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    peak_kb = ru.ru_maxrss
    lines = err.strip().splitlines()
    if lines and lines[-1].startswith("mconv-peak-kb "):
        peak_kb = int(lines.pop().split()[1])
    return wall, peak_kb / 1024, os.waitstatus_to_exitcode(status), "\n".join(lines)[-400:]


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
