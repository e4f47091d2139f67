"""Benchmark the TVM target against onnxruntime: untuned, then after a tuning budget.

For a torch model built here (``small_cnn``: the tests' ResNet-style CNN at 64x64;
``resnet18``: bench/openvino.py's ResNet-18 at 224x224; seeded weights, nothing is
downloaded), this exports ONNX, builds an untuned TVM library through
``mconv.targets.tvm`` (mconv's rule schedule; ``--plain`` adds TVM's plain loops,
``schedule=none``) and then tunes in rounds of ``--step`` MetaSchedule trials (records
cached per model, so each round adds to the last; each round's trials are spread over all
the model's functions) while the next round, taking as long as the last, would end within
``--budget-s`` seconds of tuning (always at least one round), rebuilding after each round.
Each row is printed (and, with ``--json PATH``, appended to PATH as a JSON line) as soon as
it is measured: the TVM library against onnxruntime in interleaved rounds in this process,
with the max relative error. ``tune s`` is the time spent in tuned builds so far (search,
measurement, compile).

Run: ``python bench/tvm.py [--model small_cnn|resnet18] [--budget-s 600] [--step 64]
[--threads 2] [--iters 20] [--plain] [--json rows.jsonl]``

Measured (``--model small_cnn --budget-s 120 --step 48 --iters 40 --plain``, apache-tvm
0.27.0.post1, cost model ``xgb`` (xgboost-cpu 3.2.0), 2 threads on a 2-core machine shared
with other jobs: absolute ms are inflated, the ratios come from interleaved rounds)::

    small_cnn, 2 threads, tuning budget 120 s in rounds of 48 trials, cost model xgb
               runtime  trials  tune s  build s        ms   ort ms   x ort  max rel err
       tvm plain loops       0       0      2.0      5.55     0.14   38.61     1.26e-07
                   tvm       0       0      0.5      0.53     0.14    3.76     1.26e-07
             tvm tuned      48     192    192.2      0.35     0.14    2.51     6.13e-07

One round overshot the 120 s budget: MetaSchedule's evolutionary search costs seconds per
task per iteration (a population of 512 sampled and scored) whatever the trials, and the
first round also pays ~30 s of CPU importing the tensor intrinsics. With the random cost
model, 120 trials gave 0.37 ms (2.4x onnxruntime); xgb's schedules of the three convs were
2-4x faster for the same trials. Before the trials were spread over the tasks, 128 trials
all went to the matmul and a reshape (extraction order) and gave no gain (5.7 ms).

ResNet-18, the 10-minute budget (19 tasks; ``--model resnet18 --budget-s 600 --step 76
--iters 20 --json``, 2026-12-03, nothing else running; rows in
bench/results/tvm_resnet18_600s.jsonl)::

    resnet18, 2 threads, tuning budget 600 s in rounds of 76 trials, cost model xgb
               runtime  trials  tune s  build s        ms   ort ms   x ort  max rel err
                   tvm       0       0      6.3    178.53    14.35   12.44     8.56e-07
             tvm tuned      76     203    202.9    118.31    17.31    6.83     6.65e-07
             tvm tuned     152     349    146.0     81.66    16.19    5.04     7.60e-07
             tvm tuned     228     483    134.2     62.31    16.98    3.67     6.65e-07

A fourth round (~134 s) would have ended past 600 s, so the run stopped at 483 s: untuned
12.4x onnxruntime, 3.7x after the budget, each round still gaining (12 trials a task
is far from converged; MetaSchedule's own examples use ~1000 per task). The first round
includes ~30 s of importing the tensor intrinsics; at 4 trials a task per iteration the
evolutionary search samples a population of 128 (``tuning.population``; TVM's default 512
made each round ~2x longer). TVM's plain loops (``schedule=none``): 1718 ms vs
onnxruntime's 12.1 ms (142x) in an earlier measurement.

``tvm_row(onnx_path, ...)`` gives one row (latency, size, conversion time, error) for a
table of several runtimes side by side (bench/runtimes.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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


def build_tvm(model: onnx.ModelProto, out_dir: Path, tune: int = 0, schedule: str = "rules"):
    """(artifact, seconds): the model after mconv's default passes, compiled by the TVM target."""
    from mconv.passes import optimize
    from mconv.targets import BuildOptions, get_target

    target = get_target("tvm")
    t0 = time.perf_counter()
    optimized, _ = optimize(onnx.load_from_string(model.SerializeToString()))
    options = BuildOptions(target=target.make_options({"tune": tune, "schedule": schedule}))
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


def tuning_rounds(model: onnx.ModelProto, workdir: Path, budget_s: float, step: int):
    """Rounds of ``step`` more trials, each yielded as soon as it is built: (trials, artifact,
    build seconds, seconds spent so far). At least one; no further round when, taking as
    long as the last, it would end past ``budget_s``."""
    spent, trials, last = 0.0, 0, 0.0
    while trials == 0 or spent + last <= budget_s:
        trials += step
        art, last = build_tvm(model, workdir / f"t{trials}", trials)
        spent += last
        yield trials, art, last, spent


class Rows:
    """The table, printed row by row as each is measured (flushed: a long run shows progress,
    a killed one leaves its numbers), and the same rows as JSON lines in ``json_path``."""

    HEAD = (
        f"{'runtime':>18} {'trials':>7} {'tune s':>7} {'build s':>8} {'ms':>9} {'ort ms':>8} {'x ort':>7} "
        f"{'max rel err':>12}"
    )

    def __init__(self, json_path: str | None, **common: Any) -> None:
        self.common = common
        self.json = open(json_path, "a") if json_path else None  # noqa: SIM115 - kept open for the run
        print(self.HEAD, flush=True)

    def add(self, runtime: str, trials: int, tune_s: float, build_s: float, ms: float, ort_ms: float, err: float):
        cells = f"{runtime:>18} {trials:7d} {tune_s:7.0f} {build_s:8.1f} {ms:9.2f} {ort_ms:8.2f} {ms / ort_ms:7.2f}"
        print(f"{cells} {err:12.2e}", flush=True)
        if self.json:
            row = {**self.common, "runtime": runtime, "trials": trials, "tune_s": round(tune_s, 1)}
            row |= {"build_s": round(build_s, 2), "ms": ms, "ort_ms": ort_ms, "x_ort": ms / ort_ms, "max_rel_err": err}
            self.json.write(json.dumps(row) + "\n")
            self.json.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small_cnn", choices=("small_cnn", "resnet18"))
    p.add_argument("--budget-s", type=float, default=600.0, help="seconds of tuning (default 600)")
    p.add_argument("--step", type=int, default=64, help="trials per tuning round (spread over all tasks)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--plain", action="store_true", help="also time TVM's plain loops (schedule=none; slow)")
    p.add_argument("--json", metavar="PATH", help="append each row to PATH as a JSON line, as it is measured")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from mconv.targets.tvm.tuning import _cost_model

    with tempfile.TemporaryDirectory(prefix="mconv-bench-tvm-") as tmp:
        os.environ.setdefault("MCONV_CACHE", str(Path(tmp) / "cache"))  # a fresh cache: tuning from zero
        model = onnx.load(str(export_model(args.model, Path(tmp) / "model.onnx")))
        print(
            f"{args.model}, {args.threads} threads, tuning budget {args.budget_s:g} s in rounds of {args.step} "
            f"trials, cost model {_cost_model()}",
            flush=True,
        )
        rows = Rows(args.json, model=args.model, threads=args.threads, cost_model=_cost_model())

        def measure(label: str, trials: int, tune_s: float, art: Any, build_s: float, iters: int) -> None:
            lat = _latencies(model, {"tvm": art}, args.threads, iters)
            rows.add(label, trials, tune_s, build_s, lat["tvm"], lat["onnxruntime"], max_rel_error(model, art))

        if args.plain:
            art, seconds = build_tvm(model, Path(tmp) / "plain", 0, "none")
            measure("tvm plain loops", 0, 0.0, art, seconds, max(4, args.iters // 5))
        art, seconds = build_tvm(model, Path(tmp) / "t0", 0)
        measure("tvm", 0, 0.0, art, seconds, args.iters)
        for trials, art, seconds, spent in tuning_rounds(model, Path(tmp), args.budget_s, args.step):
            measure("tvm tuned", trials, spent, art, seconds, args.iters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
