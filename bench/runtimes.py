"""Deployment runtimes side by side: one row per target, built, verified and timed by mconv.

For each model (ResNet-18 and MobileNetV2 as defined in ``bench/openvino.py``: seeded,
untrained weights with BatchNorm statistics measured on pseudo-images; nothing is
downloaded) this exports ONNX once, then each target row builds its artifact with
``mconv.build`` (verification off, so the time is conversion alone), checks every
artifact against onnxruntime with ``mconv.verify`` on held-out pseudo-images, and times
them all with ``mconv.bench`` (one child per artifact, interleaved rounds). Printed per
model and target: latency (median ms), artifact size (MB), conversion time (s), error
vs onnxruntime (max relative error, cosine).

Rows are functions in ``ROWS`` (one per target; a target whose runtime is missing gets
its error in the table instead of numbers). Add a runtime by adding a function.

Run: ``python bench/runtimes.py [--models resnet18,mobilenet_v2] [--threads 2] [--iters 40]``

Measured (``--iters 20 --warmup 3``, 2026-12-03, nothing else running; mnn 3.6.1, ai-edge-litert
2.3.0, apache-tvm 0.27 untuned with mconv's rule schedule, ncnn with shape hints; 2 threads on
a 2-core machine slower than the earlier table's: onnxruntime's ResNet-18 19.6 ms vs 10.7)::

    model         target             ms      MB  convert s   max rel    cosine
    --------------------------------------------------------------------------
    resnet18      onnx (ORT)      19.57    44.7       1.07   0.0e+00  1.000000
    resnet18      ncnn            37.54    44.7       1.20   1.6e-06  1.000000
    resnet18      openvino        22.00    44.8       1.89   1.2e-06  1.000000
    resnet18      mnn             33.01    44.7       3.48   1.2e-04  1.000000
    resnet18      litert          40.97    44.7       0.93   1.2e-06  1.000000
    resnet18      tvm            195.46    45.0       7.73   1.2e-06  1.000000
    mobilenet_v2  onnx (ORT)       5.74     8.9       0.19   0.0e+00  1.000000
    mobilenet_v2  ncnn            13.70     8.9       0.15   1.1e-05  1.000000
    mobilenet_v2  openvino         7.86     9.0       0.72   1.0e-05  1.000000
    mobilenet_v2  mnn             13.07     8.9       1.63   6.3e-06  1.000000
    mobilenet_v2  litert           7.37     8.9       0.26   5.8e-06  1.000000
    mobilenet_v2  tvm             89.24     9.3      13.34   1.0e-05  1.000000

Before the TVM rule schedule (earlier machine, ORT 10.74 / 3.85 ms) the untuned TVM rows were
1618.55 and 157.81 ms (151x and 41x onnxruntime; now 10.0x and 15.5x). One interleaved run
per table: rows of one model compare, the two tables' absolute times do not.

"convert s" is the whole ``mconv build`` without verification (passes included; for mnn also
the converter's child process start-up).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

import mconv
from mconv.errors import MconvError
from mconv.verification import recognise_artifact

_HERE = Path(__file__).resolve().parent


def bench_openvino_module():
    """``bench/openvino.py`` under another name (its own name would shadow the openvino package)."""
    spec = importlib.util.spec_from_file_location("mconv_bench_openvino", _HERE / "openvino.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export_model(name: str, folder: Path) -> Path:
    """The seeded, untrained ``name`` from ``bench/openvino.py`` as ONNX (input ``image``, 1x3x224x224)."""
    ov_bench = bench_openvino_module()
    net, _ = ov_bench.build_torch(name, steps=0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(ov_bench.export_onnx(net), path)
    return path


def write_images(folder: Path, count: int, seed: int) -> Path:
    """``count`` held-out pseudo-images (``bench/openvino.py``'s task images) as .npy files."""
    images, _ = bench_openvino_module().task_images(count, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        np.save(folder / f"{i:04d}.npy", img[None])
    return folder


def _build(src: Path, target: str, out: Path, **kw) -> tuple[Path, float]:
    t0 = time.perf_counter()
    built = mconv.build(src, target, out / target, verify=False, **kw)
    return built.artifact.main, time.perf_counter() - t0


# One function per row: (source ONNX, work folder) -> (artifact main file, conversion seconds).
ROWS: dict[str, Callable[[Path, Path], tuple[Path, float]]] = {}


def row(name: str):
    def register(fn):
        ROWS[name] = fn
        return fn

    return register


# A row needing more than a default build (options, calibration) gets its own function.
for _label, _target in [
    ("onnx (ORT)", "onnx"),
    ("ncnn", "ncnn"),
    ("openvino", "openvino"),
    ("mnn", "mnn"),
    ("litert", "litert"),
    ("tvm", "tvm"),  # untuned (tune=0): bench/tvm.py measures tuning
]:
    row(_label)(lambda src, out, _t=_target: _build(src, _t, out))


def _size_mb(main: Path) -> float:
    art = recognise_artifact(main)
    return sum(f.stat().st_size for f in art.files if f.is_file()) / 1e6


def bench_model(name: str, rows: list[str], work: Path, args) -> list[dict]:
    src = export_model(name, work)
    inputs = write_images(work / "eval", args.eval, seed=7)
    out = []
    for r in rows:
        entry = {"model": name, "row": r}
        try:
            entry["main"], entry["convert_s"] = ROWS[r](src, work / name)
            entry["size_mb"] = _size_mb(entry["main"])
        except MconvError as e:
            entry["error"] = e.message
        out.append(entry)
    built = [e for e in out if "main" in e]
    checked = mconv.verify(src, [e["main"] for e in built], inputs=inputs)
    timed = mconv.bench([e["main"] for e in built], threads=args.threads, iters=args.iters, warmup=args.warmup)
    for e, v, t in zip(built, checked.results, timed.results):
        e["rel"] = max((o["rel"] for o in v.outputs), default=float("nan"))
        e["cos"] = min((o["cosine"] for o in v.outputs), default=float("nan"))
        e["ms"] = t.median_ms
        if t.error:
            e["error"] = t.error
    return out


def print_table(rows: list[dict]) -> None:
    head = f"{'model':<14}{'target':<12}{'ms':>9}{'MB':>8}{'convert s':>11}{'max rel':>10}{'cosine':>10}"
    print(head)
    print("-" * len(head))
    for e in rows:
        if "ms" not in e or e["ms"] is None:
            print(f"{e['model']:<14}{e['row']:<12}  {e.get('error', 'failed')[:90]}")
            continue
        print(
            f"{e['model']:<14}{e['row']:<12}{e['ms']:>9.2f}{e['size_mb']:>8.1f}{e['convert_s']:>11.2f}"
            f"{e['rel']:>10.1e}{e['cos']:>10.6f}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"targets, of: {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--eval", type=int, default=4, help="held-out images for the error columns")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    table = []
    with tempfile.TemporaryDirectory(prefix="mconv-bench-rt-") as tmp:
        for name in args.models.split(","):
            table += bench_model(name, rows, Path(tmp) / name, args)
            print(f"  {name}: done", file=sys.stderr, flush=True)
    print(f"batch 1, {args.threads} threads, median of {args.iters} interleaved iterations per artifact")
    print_table(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
