"""Benchmark: zoo runs with each executor, and the balance of the ``--shard`` split.

1. Wall time of ``mconv run`` on the repo's recipes (``recipes/*.yaml``; a recipe none of
   whose targets has its runtime here is left out) with ``-j 1``, ``-j 2`` and
   ``--executor ray`` (a private local Ray instance, its start-up included), each a fresh
   ``mconv`` process into a fresh output folder. ``--rounds R`` repeats the three in turn
   (interleaved) and keeps each one's best.
2. The split's balance, max / mean estimated cost per shard, for N = 2, 4, 8 on the repo's
   recipes and on a synthetic plan of 200 jobs (60 models of log-uniform sizes, 1 to 6
   targets each, seeded), with the naive split (jobs sorted by key, dealt round-robin)
   beside it for comparison.

    python bench/runs.py [--rounds 1] [--skip-runs] [--recipes recipes/a.yaml,...]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def runnable_recipes(paths: list[str]) -> list[str]:
    from mconv.recipe import load_recipe
    from mconv.targets import get_target

    out = []
    for p in paths:
        r = load_recipe(p)
        if any(not get_target(t.target).runtime_missing() for t in r.spec.targets):
            out.append(p)
        else:
            print(f"skipped {p}: no runtime of its targets is available here", file=sys.stderr)
    return out


def time_run(recipes: list[str], args: list[str]) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="mconv-bench-runs-") as d:
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "mconv", "run", *recipes, "-o", d, *args], capture_output=True, text=True
        )
        return time.perf_counter() - t0, p.returncode


def bench_runs(recipes: list[str], rounds: int) -> None:
    configs = {"-j 1": ["-j", "1"], "-j 2": ["-j", "2"], "--executor ray": ["--executor", "ray"]}
    best: dict[str, float] = {}
    codes: dict[str, int] = {}
    for _ in range(rounds):
        for name, args in configs.items():
            seconds, code = time_run(recipes, args)
            best[name] = min(best.get(name, seconds), seconds)
            codes[name] = code
    print(f"\n{len(recipes)} recipes ({', '.join(Path(r).stem for r in recipes)}); {os.cpu_count()} CPUs\n")
    print(f"| executor | wall s (best of {rounds}) | exit |")
    print("|---|---|---|")
    for name in configs:
        print(f"| `{name}` | {best[name]:.1f} | {codes[name]} |")


def round_robin(jobs, count: int):
    shards = [[] for _ in range(count)]
    for i, j in enumerate(sorted(jobs, key=lambda j: j.key)):
        shards[i % count].append(j)
    return shards


def synthetic_plan(n_jobs: int = 200, seed: int = 0):
    from mconv.runs.shard import PRECISION_WEIGHT, Job

    rng = random.Random(seed)
    combos = [(t, p) for t in ("onnx", "ncnn", "openvino") for p in ("fp32", "fp16", "int8")]
    jobs = []
    i = 0
    while len(jobs) < n_jobs:
        size = int(10 ** rng.uniform(4, 9))  # 10 kB .. 1 GB
        for t, p in rng.sample(combos, min(rng.randint(1, 6), n_jobs - len(jobs))):
            jobs.append(Job(f"model{i:03d}", t, p, f"{t}_{p}", size * PRECISION_WEIGHT.get(p, 1.0)))
        i += 1
    return jobs


def bench_balance(recipes: list[str]) -> None:
    from mconv.recipe import load_recipes
    from mconv.runs.shard import balance, expand, split

    plans = {"repo recipes": expand(load_recipes(recipes)), "synthetic": synthetic_plan()}
    print("\n| plan | jobs | N | max/mean (LPT, mconv) | max/mean (round-robin) |")
    print("|---|---|---|---|---|")
    for name, jobs in plans.items():
        for n in (2, 4, 8):
            lpt, naive = balance(split(jobs, n)), balance(round_robin(jobs, n))
            print(f"| {name} | {len(jobs)} | {n} | {lpt:.3f} | {naive:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--recipes", default=None, help="comma-separated recipe files (default recipes/*.yaml)")
    a = ap.parse_args()
    paths = a.recipes.split(",") if a.recipes else sorted(glob.glob(str(ROOT / "recipes" / "*.yaml")))
    recipes = runnable_recipes(paths)
    if not a.skip_runs:
        bench_runs(recipes, a.rounds)
    bench_balance(recipes)


if __name__ == "__main__":
    main()
