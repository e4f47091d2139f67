"""ONNX operator conformance through mconv's ncnn writer and through pnnx (run by hand).

Every float case of onnx's node tests (``collect_testcases()``: float inputs and
outputs), with every input after the first frozen as a constant, as deployed models
have their weights, shapes and axes. Both converters get the same frozen model; both
artifacts run on ncnn (FP32) and are compared with the case's expected outputs at the
conformance tolerance (max abs <= 1e-4 of the output's magnitude + 1e-6).

Per case and converter: *right*, *refused* (conversion failed, or the artifact does
not load or run) or *wrong* (runs, misses the tolerance). Prints the totals and the
cases where one is right and the other is not; raw rows go to
``bench/results/conformance_vs_pnnx.json``.

Usage: .venv-bench/bin/python bench/conformance_vs_pnnx.py [--only SUBSTRING] [--limit N] [--resume]
       [--mconv-only]

``--mconv-only`` re-runs mconv's side after a writer change and keeps pnnx's stored
column (the pnnx wheel did not change; a case without a stored row runs both).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ncnn_timing import NetSpec, outputs_isolated

from mconv.targets.ncnn import conformance

RESULTS = Path(__file__).resolve().parent / "results" / "conformance_vs_pnnx.json"
FLOAT = {onnx.TensorProto.FLOAT}


def float_cases(only: str = "") -> list:
    out = []
    for c in conformance.load_cases():
        if only and only not in c.name:
            continue
        ios = list(c.model.graph.input) + list(c.model.graph.output)
        if not ios or any(vi.type.tensor_type.elem_type not in FLOAT for vi in c.model.graph.output):
            continue
        first = c.model.graph.input[0] if c.model.graph.input else None
        if first is None or first.type.tensor_type.elem_type not in FLOAT:
            continue
        out.append(c)
    return out


def frozen_model(case) -> tuple[onnx.ModelProto, dict, list]:
    """The case with every input but the first frozen (first data set); its feed and
    expected outputs."""
    inputs, expected = case.data_sets[0]
    names = [vi.name for vi in case.model.graph.input]
    feeds = {n: np.asarray(v) for n, v in zip(names, inputs)}
    model = conformance.freeze(case.model, feeds, set(names[1:])) if len(names) > 1 else case.model
    return model, {names[0]: feeds[names[0]]}, [np.asarray(e) for e in expected]


def close(exp: np.ndarray, got: np.ndarray) -> bool:
    exp = np.asarray(exp, np.float64)
    got = np.asarray(got, np.float64)
    if exp.size != got.size:
        return False
    got = got.reshape(exp.shape)
    if not np.array_equal(np.isfinite(exp), np.isfinite(got)):
        return False
    f = np.isfinite(exp)
    tol = 1e-4 * (float(np.abs(exp[f]).max()) if f.any() else 0.0) + 1e-6
    return bool(np.all(np.abs(exp[f] - got[f]) <= tol))


def mconv_side(case, work: Path) -> str:
    model, feeds, expected = frozen_model(case)
    try:
        outs = conformance._convert_run(model, feeds, set(), work / "mconv")
    except Exception:  # any refusal (unsupported op, unrepresentable shape)
        return "refused"
    got = [outs[o.name] for o in model.graph.output]
    return "right" if all(close(e, g) for e, g in zip(expected, got)) else "wrong"


def pnnx_side(case, work: Path) -> str:
    model, feeds, expected = frozen_model(case)
    d = work / "pnnx"
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, d / "case.onnx")
    x = next(iter(feeds.values()))
    exe = shutil.which("pnnx") or str(Path(sys.executable).parent / "pnnx")
    try:
        subprocess.run([exe, "case.onnx", f"inputshape=[{','.join(map(str, x.shape))}]", "fp16=0"], cwd=d,
                       capture_output=True, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "refused"
    param = d / "case.ncnn.param"
    if not param.is_file():
        return "refused"
    mat = x.astype(np.float32)
    mat = mat[0] if mat.ndim > 1 and mat.shape[0] == 1 else mat
    np.savez(d / "in.npz", k0=np.ascontiguousarray(mat))
    net = NetSpec(str(param), str(param.with_suffix(".bin")), {"in0": "k0"}, [f"out{i}" for i in range(len(expected))])
    try:
        got = outputs_isolated(net, str(d / "in.npz"), threads=1, timeout=120)
    except Exception:
        return "refused"
    return "right" if all(close(e, g) for e, g in zip(expected, got)) else "wrong"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the cases an interrupted full run finished")
    ap.add_argument("--mconv-only", action="store_true", help="re-run mconv only; pnnx's column from the stored rows")
    args = ap.parse_args()
    cases = float_cases(args.only)
    if args.limit:
        cases = cases[: args.limit]
    full = not args.only and not args.limit
    partial = RESULTS.with_suffix(".partial.json")
    done = {r["case"]: r for r in json.loads(partial.read_text())} if full and args.resume and partial.is_file() else {}
    stored = {r["case"]: r for r in json.loads(RESULTS.read_text())} if args.mconv_only and RESULTS.is_file() else {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, c in enumerate(cases):
        if c.name in done:
            rows.append(done[c.name])
            continue
        with tempfile.TemporaryDirectory(prefix="conf-") as tmp:
            row = {"case": c.name, "ops": sorted({n.op_type for n in c.model.graph.node}),
                   "mconv": mconv_side(c, Path(tmp))}  # fmt: skip
            row["pnnx"] = stored[c.name]["pnnx"] if c.name in stored else pnnx_side(c, Path(tmp))
        rows.append(row)
        if i % 25 == 0:
            print(f"{i}/{len(cases)}", file=sys.stderr, flush=True)
            if full:  # an interrupted run continues with --resume
                partial.write_text(json.dumps(rows, indent=0) + "\n")
    if full:
        RESULTS.write_text(json.dumps(rows, indent=0) + "\n")
        partial.unlink(missing_ok=True)
    print(f"{len(rows)} float cases (inputs after the first frozen as constants)")
    print(f"{'':<8}{'right':>8}{'refused':>9}{'wrong':>7}")
    for side in ("mconv", "pnnx"):
        counts = [sum(r[side] == s for r in rows) for s in ("right", "refused", "wrong")]
        print(f"{side:<8}{counts[0]:>8}{counts[1]:>9}{counts[2]:>7}")
    for a, b in (("pnnx", "mconv"), ("mconv", "pnnx")):
        only = [r for r in rows if r[a] == "right" and r[b] != "right"]
        print(f"\n{a} right, {b} not ({len(only)}):")
        for r in only:
            print(f"  {r['case']:<60} {b}: {r[b]:<8} {','.join(r['ops'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
