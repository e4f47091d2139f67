"""Benchmark: the default pass pipeline vs onnxsim alone on large synthetic graphs.

Graphs of ~5k, 20k and 50k nodes: chains of Conv -> BatchNormalization -> Relu blocks,
each followed by a shape-op subgraph (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)
of the kind exporters emit for flatten/unflatten. Each measurement runs in a fresh child
process, so peak RSS (ru_maxrss) belongs to that run alone.

    python bench/passes.py [--sizes 5000,20000,50000] [--skip-onnxsim]

Goals: time grows no worse than linearly (50k/5k ratio <= 12), and the pipeline is faster
than onnxsim alone at 50k nodes.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000,50000")
    ap.add_argument("--skip-onnxsim", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
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
