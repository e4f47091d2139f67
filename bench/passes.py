"""Benchmark: the default pass pipeline vs onnxsim alone on large synthetic graphs.

Graphs of ~5k, 20k and 50k nodes: chains of Conv -> BatchNormalization -> Relu blocks,
each followed by a shape-op subgraph (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)
of the kind exporters emit for flatten/unflatten. Each measurement runs in a fresh child
process, so peak RSS (ru_maxrss) belongs to that run alone.

    python bench/passes.py [--sizes 5000,20000,50000] [--skip-onnxsim]
    python bench/passes.py --real [--zoo bench/.zoo] [--repeat 2]

Goals: time grows no worse than linearly (50k/5k ratio <= 12), and the pipeline is faster
than onnxsim alone at 50k nodes.

``--real``: whole processes, as users run them, on real graphs (ViT-B/16, Swin-T and
DenseNet-121 from the bench zoo, see bench/zoo_models.py, and the nine light models
that ship in the onnx wheel): ``mconv optimize IN -o OUT`` against a process that
loads the model, calls ``onnxsim.simplify`` and saves the result (what the ``onnxsim``
CLI does, without its report). Each is the best of ``--repeat`` fresh runs, the two
interleaved; outputs are checked against the source with onnxruntime on random inputs
(max relative error).
Goal: mconv <= onnxsim on every row.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

import numpy as np

NODES_PER_BLOCK = 8


def make_graph(n_nodes: int, channels: int = 8, size: int = 4, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    blocks = max(1, n_nodes // NODES_PER_BLOCK)
    nodes, inits = [], []
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array(0, np.int64), "idx0"),
        numpy_helper.from_array(np.array([channels, size, size], np.int64), "chw"),
    ]
    x = "input"
    c = channels
    for b in range(blocks):
        p = f"b{b}"
        inits += [
            numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.2).astype(np.float32), f"{p}_w"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{p}_scale"),
            numpy_helper.from_array((rng.standard_normal(c) * 0.1).astype(np.float32), f"{p}_beta"),
            numpy_helper.from_array((rng.standard_normal(c) * 0.1).astype(np.float32), f"{p}_mean"),
            numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{p}_var"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"{p}_w"], [f"{p}_c"], name=f"{p}_conv", pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization",
                [f"{p}_c", f"{p}_scale", f"{p}_beta", f"{p}_mean", f"{p}_var"],
                [f"{p}_bn"],
                name=f"{p}_bn",
            ),
            helper.make_node("Relu", [f"{p}_bn"], [f"{p}_r"], name=f"{p}_relu"),
            helper.make_node("Shape", [f"{p}_r"], [f"{p}_s"], name=f"{p}_shape"),
            helper.make_node("Gather", [f"{p}_s", "idx0"], [f"{p}_n"], name=f"{p}_gather", axis=0),
            helper.make_node("Unsqueeze", [f"{p}_n", "axis0"], [f"{p}_n1"], name=f"{p}_unsq"),
            helper.make_node("Concat", [f"{p}_n1", "chw"], [f"{p}_shp"], name=f"{p}_concat", axis=0),
            helper.make_node("Reshape", [f"{p}_r", f"{p}_shp"], [f"{p}_y"], name=f"{p}_reshape"),
        ]
        x = f"{p}_y"
    g = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, size, size])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _measure(kind: str, path: str, conn) -> None:
    import onnx
    import onnxruntime  # noqa: F401 - imports are not what is measured
    import onnxsim

    import mconv.passes  # noqa: F401

    model = onnx.load(path)
    t0 = time.perf_counter()
    if kind == "mconv":
        from mconv.passes import optimize

        out, _ = optimize(model)
    else:
        out, ok = onnxsim.simplify(model)
        assert ok
    seconds = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send({"seconds": seconds, "peak_rss_mb": rss_mb, "nodes_after": len(out.graph.node)})
    conn.close()


def measure(kind: str, path: str) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_measure, args=(kind, path, child))
    p.start()
    child.close()
    result = parent.recv()
    p.join()
    return result


REAL_ZOO = ("tv_vit_b_16", "tv_swin_t", "densenet121")
_ONNXSIM_ALONE = """
import sys, onnx, onnxsim
m = onnx.load(sys.argv[1])
out, ok = onnxsim.simplify(m)
assert ok
onnx.save(out, sys.argv[2])
"""


def _wall(cmd: list[str]) -> float:
    import subprocess

    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _max_rel_error(src: str, out: str) -> float:
    import onnx
    import onnxruntime as ort

    from mconv.data import random_feeds
    from mconv.graphinfo import graph_inputs

    feeds = random_feeds(graph_inputs(onnx.load(src, load_external_data=False)), seed=0, count=1)[0]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    a = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"]).run(None, feeds)
    return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)) for x, y in zip(a, b))


def real_graphs(zoo: str) -> list[tuple[str, str]]:
    import onnx

    light = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
    out = [(f"zoo:{n}", os.path.join(zoo, n, "model.onnx")) for n in REAL_ZOO]
    out = [(n, p) for n, p in out if os.path.exists(p)]
    out += [
        (f"light:{f.removeprefix('light_').removesuffix('.onnx')}", os.path.join(light, f))
        for f in sorted(os.listdir(light))
        if f.startswith("light_") and f.endswith(".onnx")
    ]
    return out


def main_real(zoo: str, repeat: int, only: list[str] | None) -> int:
    import onnx

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, path in real_graphs(zoo):
            if only and name not in only:
                continue
            a, b = os.path.join(d, "mconv.onnx"), os.path.join(d, "onnxsim.onnx")
            t_m = t_s = float("inf")
            for _ in range(repeat):  # interleaved, so both see the same machine load
                t_m = min(t_m, _wall([sys.executable, "-m", "mconv", "optimize", path, "-o", a]))
                t_s = min(t_s, _wall([sys.executable, "-c", _ONNXSIM_ALONE, path, b]))
            nodes = len(onnx.load(path, load_external_data=False).graph.node)
            rows.append(
                (
                    name,
                    nodes,
                    t_m,
                    len(onnx.load(a).graph.node),
                    _max_rel_error(path, a),
                    t_s,
                    len(onnx.load(b).graph.node),
                )
            )
            print(f"measured {name}", file=sys.stderr)
    hdr = (
        f"{'model':>18} {'nodes':>6} | {'mconv s':>7} {'after':>6} {'max rel err':>11} | "
        f"{'onnxsim s':>9} {'after':>6} | {'mconv/onnxsim':>13}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, nodes, t_m, n_m, err, t_s, n_s in rows:
        print(f"{name:>18} {nodes:>6} | {t_m:>7.2f} {n_m:>6} {err:>11.1e} | {t_s:>9.2f} {n_s:>6} | {t_m / t_s:>13.2f}")
    slower = [r[0] for r in rows if r[2] > r[5]]
    print("\nmconv optimize <= onnxsim alone on every row" if not slower else f"\nSLOWER on: {', '.join(slower)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000,50000")
    ap.add_argument("--skip-onnxsim", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--real", action="store_true", help="whole processes on real graphs (see the docstring)")
    ap.add_argument("--zoo", default=os.path.join(os.path.dirname(__file__), ".zoo"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated model names (with --real)")
    args = ap.parse_args()
    if args.real:
        return main_real(args.zoo, args.repeat, args.only.split(",") if args.only else None)
    import onnx

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in sizes:
            m = make_graph(n)
            path = os.path.join(d, f"g{n}.onnx")
            onnx.save(m, path)
            row = {"nodes": len(m.graph.node), "mconv": measure("mconv", path)}
            if not args.skip_onnxsim:
                row["onnxsim"] = measure("onnxsim", path)
            rows.append(row)
            print(f"measured {row['nodes']} nodes", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    hdr = (
        f"{'nodes':>7} | {'mconv s':>8} {'RSS MB':>7} {'after':>6} | "
        f"{'onnxsim s':>9} {'RSS MB':>7} {'after':>6} | {'onnxsim/mconv':>13}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        a = r["mconv"]
        line = f"{r['nodes']:>7} | {a['seconds']:>8.2f} {a['peak_rss_mb']:>7.0f} {a['nodes_after']:>6}"
        if "onnxsim" in r:
            b = r["onnxsim"]
            speedup = b["seconds"] / a["seconds"]
            line += f" | {b['seconds']:>9.2f} {b['peak_rss_mb']:>7.0f} {b['nodes_after']:>6} | {speedup:>13.2f}"
        print(line)
    first, last = rows[0], rows[-1]
    scale = last["nodes"] / first["nodes"]
    ratio = last["mconv"]["seconds"] / first["mconv"]["seconds"]
    print(f"\nmconv time ratio {last['nodes']}/{first['nodes']} nodes: {ratio:.2f} (nodes x{scale:.1f}; goal <= 12)")
    if "onnxsim" in last:
        a, b = last["mconv"]["seconds"], last["onnxsim"]["seconds"]
        print(f"at {last['nodes']} nodes: mconv {a:.2f} s vs onnxsim {b:.2f} s ({'faster' if a < b else 'SLOWER'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
