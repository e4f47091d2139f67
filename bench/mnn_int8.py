"""MNN INT8: weight-only (``int8_mode=weight``) vs calibrated full INT8 (``int8_mode=full``).

Builds FP32, FP16 and both INT8 kinds of ``--target mnn`` for ResNet-18 and ViT-Ti/16
(``bench/openvino.py``'s definitions, seeded and untrained, exported through
``bench/runtimes.py``), calibrating full INT8 on pseudo-images, and prints for each:
conversion time, size, latency (``mconv.bench``, interleaved) and agreement with
onnxruntime on other, held-out pseudo-images (``mconv.verify``). The default of
``int8_mode`` follows from this table (see the README).

Run: ``python bench/mnn_int8.py [--models resnet18,vit_ti16] [--calib 32] [--iters 20]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import mconv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtimes import export_model, write_images

VARIANTS = {
    "fp32": {"precision": "fp32"},
    "fp16": {"precision": "fp16"},
    "int8 weight": {"precision": "int8", "options": {"int8_mode": "weight"}},
    "int8 full": {"precision": "int8", "options": {"int8_mode": "full"}},
}


def measure(name: str, work: Path, args) -> list[dict]:
    src = export_model(name, work)
    calib = write_images(work / "calib", args.calib, seed=1)
    held_out = write_images(work / "eval", args.eval, seed=7)
    rows = []
    for label, kw in VARIANTS.items():
        kw = dict(kw)
        if kw["precision"] == "int8":
            kw["calib"] = calib
        t0 = time.perf_counter()
        built = mconv.build(src, "mnn", work / label.replace(" ", "_"), verify=False, **kw)
        main = built.artifact.main
        rows.append({"model": name, "variant": label, "main": main, "convert_s": time.perf_counter() - t0})
        rows[-1]["mb"] = main.stat().st_size / 1e6
    mains = [r["main"] for r in rows]
    checked = mconv.verify(src, mains, inputs=held_out)
    timed = mconv.bench(mains, threads=args.threads, iters=args.iters, warmup=args.warmup)
    for r, v, t in zip(rows, checked.results, timed.results):
        r["cos"] = min((o["cosine"] for o in v.outputs), default=float("nan"))
        r["rel"] = max((o["rel"] for o in v.outputs), default=float("nan"))
        r["ms"] = t.median_ms
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,vit_ti16")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mconv-bench-mnn-") as tmp:
        for name in args.models.split(","):
            rows += measure(name, Path(tmp) / name, args)
    print(f"mnn, batch 1, {args.threads} threads, calib {args.calib}, eval {args.eval} held-out images")
    head = f"{'model':<12}{'variant':<13}{'ms':>9}{'x fp32':>8}{'MB':>7}{'convert s':>11}{'rel':>10}{'cos':>10}"
    print(head)
    print("-" * len(head))
    fp32 = {r["model"]: r["ms"] for r in rows if r["variant"] == "fp32"}
    for r in rows:
        print(
            f"{r['model']:<12}{r['variant']:<13}{r['ms']:>9.2f}{fp32[r['model']] / r['ms']:>8.2f}{r['mb']:>7.1f}"
            f"{r['convert_s']:>11.2f}{r['rel']:>10.1e}{r['cos']:>10.6f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
