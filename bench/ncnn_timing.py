"""Timing ncnn artifacts the same way for every converter (shared by the ncnn benches).

An artifact here is a ``.param``/``.bin`` pair plus the blobs to feed and extract
(``NetSpec``); the arrays are already in each input blob's Mat shape, so mconv's and
pnnx's artifacts run through exactly the same code.

Latency is measured in fresh processes that alternate which artifact is loaded first:
on this machine the net loaded first in a process runs ~4% slower than one loaded
later, also for two copies of the same artifact, so a fixed order would bias every
ratio by that much. The ratio is the geometric mean of the per-process ratios; timing
an artifact against itself the same way gives the noise floor of that ratio.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class NetSpec:
    """One ncnn artifact: files, what to feed (blob -> npz key), what to extract."""

    param: str
    bin: str
    feeds: dict[str, str]  # input blob -> key in the inputs .npz (already Mat-shaped)
    outputs: list[str] = field(default_factory=list)


def load_net(param: str, binf: str, threads: int):
    """An FP32 ncnn Net (vulkan and fp16/bf16 paths off) on ``threads`` threads."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = threads
    if net.load_param(param) != 0 or net.load_model(binf) != 0:
        raise RuntimeError(f"ncnn cannot load {Path(param).name}")
    return net


def run_once(net, feeds: dict[str, np.ndarray], outputs: list[str]) -> tuple[list[np.ndarray], float]:
    import ncnn

    t0 = time.perf_counter()
    res = []
    with net.create_extractor() as ex:
        for blob, x in feeds.items():
            ex.input(blob, ncnn.Mat(x).clone())
        for blob in outputs:
            ret, mat = ex.extract(blob)
            if ret != 0:
                raise RuntimeError(f"extract {blob} failed ({ret})")
            res.append(np.array(mat).copy())
    return res, time.perf_counter() - t0


def child(spec_path: str) -> int:
    """Child mode: load the nets in the order given, time them interleaved, print JSON
    (median ms per net); with ``"save"`` also write each net's outputs to an .npz."""
    spec = json.loads(Path(spec_path).read_text())
    data = np.load(spec["inputs"])
    nets = {}
    for key, s in spec["nets"]:
        ns = NetSpec(**s)
        nets[key] = (load_net(ns.param, ns.bin, spec["threads"]),
                     {b: np.ascontiguousarray(data[k]) for b, k in ns.feeds.items()}, ns.outputs)  # fmt: skip
    first = {k: run_once(*v) for k, v in nets.items()}
    if spec.get("save"):
        for k, (outs, _) in first.items():
            np.savez(Path(spec["save"]) / f"{k}.npz", *outs)
    runs = spec["runs"]
    if runs <= 0:
        print(json.dumps({k: v[1] * 1000 for k, v in first.items()}))
        return 0
    if runs == "auto" or runs is None:
        runs = 20
    slowest = max(v[1] for v in first.values())
    runs = int(min(runs, max(5, math.ceil(spec.get("budget_s", 3.0) / max(slowest * len(nets), 1e-6)))))
    times = {k: [] for k in nets}
    for i in range(runs + 2):
        for k, v in nets.items():
            dt = run_once(*v)[1]
            if i >= 2:
                times[k].append(dt)
    print(json.dumps({k: float(np.median(t)) * 1000 for k, t in times.items()}))
    return 0


def _spawn(spec: dict, work: Path, timeout: float) -> dict:
    path = work / f"spec-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, __file__, str(path)], capture_output=True, text=True, timeout=timeout)
    finally:
        path.unlink(missing_ok=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        if proc.returncode < 0:
            tail = [f"crashed natively (signal {-proc.returncode})"]
        raise RuntimeError(tail[0][:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def outputs_isolated(net: NetSpec, inputs: str, threads: int, timeout: float = 600) -> list[np.ndarray]:
    """Run ``net`` once in a child process (a native crash fails only this call)."""
    with tempfile.TemporaryDirectory(prefix="ncnn-run-") as tmp:
        spec = {"inputs": inputs, "threads": threads, "runs": 0, "save": tmp, "nets": [["a", asdict(net)]]}
        _spawn(spec, Path(tmp), timeout)
        with np.load(Path(tmp) / "a.npz") as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]


@dataclass
class Timing:
    ms: dict[str, float]  # median over processes of each net's median latency
    ratio: float  # geometric mean over processes of ms[a] / ms[b]
    spread: float  # max/min of the per-process ratios


def timed_fresh(a: NetSpec, b: NetSpec, inputs: str, *, threads: int, procs: int = 4, runs: int = 20,
                budget_s: float = 3.0, timeout: float = 900) -> Timing:  # fmt: skip
    """Latency of ``a`` and ``b`` in ``procs`` fresh processes alternating the load order."""
    per: dict[str, list[float]] = {"a": [], "b": []}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="ncnn-time-") as tmp:
        for i in range(procs):
            order = [["a", asdict(a)], ["b", asdict(b)]]
            spec = {"inputs": inputs, "threads": threads, "runs": runs, "budget_s": budget_s,
                    "nets": order if i % 2 == 0 else order[::-1]}  # fmt: skip
            ms = _spawn(spec, Path(tmp), timeout)
            per["a"].append(ms["a"])
            per["b"].append(ms["b"])
            ratios.append(ms["a"] / ms["b"])
    ratio = float(np.exp(np.mean(np.log(ratios))))
    return Timing({k: float(np.median(v)) for k, v in per.items()}, ratio, float(max(ratios) / min(ratios)))


if __name__ == "__main__":
    sys.exit(child(sys.argv[1]))
