"""Benchmark the TVM target against onnxruntime: untuned, then after a tuning budget.

For a torch model built here (``small_cnn``: the tests' ResNet-style CNN at 64x64;
``resnet18``: bench/openvino.py's ResNet-18 at 224x224; seeded weights, nothing is
downloaded), this exports ONNX, builds an untuned TVM library through
``mconv.targets.tvm`` and then tunes in rounds of ``--step`` MetaSchedule trials (records
cached per model, so each round adds to the last) until ``--budget-s`` seconds of tuning
are spent, rebuilding after each round. It prints onnxruntime's latency and each TVM
library's, measured in interleaved rounds in this process, with the max relative error.

Run: ``python bench/tvm.py [--model small_cnn|resnet18] [--budget-s 600] [--step 32]
[--threads 2] [--iters 20]``

Measured (``--model small_cnn --budget-s 120 --step 16 --iters 40``, apache-tvm 0.27.0.post1,
cost model ``random`` (xgboost not installed), 2 threads on a 2-core machine shared with five
other jobs: absolute ms are inflated, the ratios come from interleaved rounds)::

    small_cnn, 2 threads, tuning budget 120 s (spent 127 s)
                   runtime  trials  build s        ms   x ort  max rel err
               onnxruntime                       0.14    1.00
                       tvm       0      1.9      5.81   40.50     1.26e-07
                       tvm      16     48.3      5.79   40.35     1.26e-07
                       tvm      32     12.8      8.83   61.59     1.26e-07
                       tvm      64     13.5      5.70   39.73     1.26e-07
                       tvm     128     11.7      5.72   39.88     1.26e-07

(rounds 48-112 omitted: 5.6-7.6 ms). Untuned is ~40x onnxruntime, as the issue measured on
ResNet-18 (~45x); 128 trials of the random-cost-model search did not beat the untuned
library here (the tuned schedules are applied: their functions are parallel and
vectorized). The first round includes ~30 s of CPU importing MetaSchedule's tensor
intrinsics.

``tvm_row(onnx_path, ...)`` gives one row (latency, size, conversion time, error) for a
table of several runtimes side by side (bench/runtimes.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as `python bench/tvm.py`, this file's folder leads sys.path and its name would
# shadow the tvm package: drop the folder before anything imports it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
import onnx  # noqa: E402


def _openvino_bench() -> Any:
    """bench/openvino.py as a module (its ResNet-18, export and timing helpers)."""
    spec = importlib.util.spec_from_file_location("mconv_bench_openvino", _HERE / "openvino.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export_model(name: str, path: Path) -> Path:
    import torch

    if name == "resnet18":
        torch.manual_seed(0)
        net, size = _openvino_bench().ResNet18().eval(), 224
    else:
        sys.path.insert(0, str(_HERE.parent))
        from tests.torch_models import seeded_small_cnn

        net, size = seeded_small_cnn(), 64
    torch.onnx.export(
        net, (torch.zeros(1, 3, size, size),), str(path), input_names=["image"], output_names=["logits"], dynamo=False
    )
    return path


def build_tvm(model: onnx.ModelProto, out_dir: Path, tune: int = 0):
    """(artifact, seconds): the model after mconv's default passes, compiled by the TVM target."""
    from mconv.passes import optimize
    from mconv.targets import BuildOptions, get_target

    target = get_target("tvm")
    t0 = time.perf_counter()
    optimized, _ = optimize(onnx.load_from_string(model.SerializeToString()))
    options = BuildOptions(target=target.make_options({"tune": tune}))
    artifact = target.write(optimized, out_dir, "model", options)
    return artifact, time.perf_counter() - t0


def _feeds(model: onnx.ModelProto, count: int = 4) -> list[dict[str, np.ndarray]]:
    from mconv.data import random_feeds
    from mconv.graphinfo import graph_inputs

    return random_feeds(graph_inputs(model), seed=0, count=count)


def _latencies(model: onnx.ModelProto, artifacts: dict[str, Any], threads: int, iters: int) -> dict[str, float]:
    """Median ms of onnxruntime and each artifact, interleaved rounds (best round kept)."""
    from mconv.targets import get_target

    ov = _openvino_bench()
    feeds = _feeds(model)
    sess = ov.ort_session(model, threads)
    fns = {"onnxruntime": lambda f: sess.run(None, f)}
    for key, art in artifacts.items():
        runner = get_target("tvm").runner(art, threads=threads)
        fns[key] = runner.infer
    return ov.time_interleaved(fns, feeds, argparse.Namespace(iters=iters, warmup=2))


def max_rel_error(model: onnx.ModelProto, artifact: Any) -> float:
    from mconv.runner import reference_outputs
    from mconv.targets import get_target

    feeds = _feeds(model, 2)
    refs, names = reference_outputs(model, feeds)
    runner = get_target("tvm").runner(artifact)
    worst = 0.0
    for f, ref in zip(feeds, refs):
        got = runner.infer(f)
        for n in names:
            worst = max(worst, float(np.abs(got[n] - ref[n]).max() / max(np.abs(ref[n]).max(), 1e-12)))
    return worst


def tvm_row(onnx_path: str | Path, *, tune: int = 0, threads: int = 2, iters: int = 20) -> dict[str, Any]:
    """One row for a runtimes table: the TVM library of ``onnx_path`` (``tune`` MetaSchedule
    trials; 0: untuned) against onnxruntime.

    Returns ``{"runtime": "tvm" or "tvm (tune=N)", "latency_ms", "ort_ms", "size_bytes",
    "convert_s", "max_rel_err"}``; conversion time includes tuning not found in the cache.
    """
    model = onnx.load(str(onnx_path))
    with tempfile.TemporaryDirectory(prefix="mconv-bench-tvm-") as tmp:
        art, seconds = build_tvm(model, Path(tmp), tune)
        lat = _latencies(model, {"tvm": art}, threads, iters)
        return {
            "runtime": f"tvm (tune={tune})" if tune else "tvm",
            "latency_ms": lat["tvm"],
            "ort_ms": lat["onnxruntime"],
            "size_bytes": sum(p.stat().st_size for p in art.files),
            "convert_s": seconds,
            "max_rel_err": max_rel_error(model, art),
        }


def tune_within(model: onnx.ModelProto, workdir: Path, budget_s: float, step: int) -> list[tuple[int, Any, float]]:
    """Untuned, then rounds of ``step`` more trials until ``budget_s`` seconds are spent:
    (trials, artifact, build seconds) per round."""
    out = []
    art, seconds = build_tvm(model, workdir / "t0", 0)
    out.append((0, art, seconds))
    spent, trials = 0.0, 0
    while spent < budget_s:
        trials += step
        art, seconds = build_tvm(model, workdir / f"t{trials}", trials)
        spent += seconds
        out.append((trials, art, seconds))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small_cnn", choices=("small_cnn", "resnet18"))
    p.add_argument("--budget-s", type=float, default=600.0, help="seconds of tuning (default 600)")
    p.add_argument("--step", type=int, default=32, help="trials per tuning round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="mconv-bench-tvm-") as tmp:
        os.environ.setdefault("MCONV_CACHE", str(Path(tmp) / "cache"))  # a fresh cache: tuning from zero
        model = onnx.load(str(export_model(args.model, Path(tmp) / "model.onnx")))
        t0 = time.perf_counter()
        rounds = tune_within(model, Path(tmp), args.budget_s, args.step)
        total = time.perf_counter() - t0
        lat = _latencies(model, {f"tvm tune={n}": a for n, a, _ in rounds}, args.threads, args.iters)
        ort_ms = lat["onnxruntime"]
        print(f"{args.model}, {args.threads} threads, tuning budget {args.budget_s:g} s (spent {total:.0f} s)")
        print(f"{'runtime':>22} {'trials':>7} {'build s':>8} {'ms':>9} {'x ort':>7} {'max rel err':>12}")
        print(f"{'onnxruntime':>22} {'':>7} {'':>8} {ort_ms:9.2f} {1.0:7.2f} {'':>12}")
        for n, art, seconds in rounds:
            ms = lat[f"tvm tune={n}"]
            err = max_rel_error(model, art)
            print(f"{'tvm':>22} {n:7d} {seconds:8.1f} {ms:9.2f} {ms / ort_ms:7.2f} {err:12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
