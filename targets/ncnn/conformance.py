"""Conformance against ONNX's own node tests, and a helper to round-trip a model.

``python -m mconv.targets.ncnn.conformance`` runs every case of
``onnx.backend.test.case.node.collect_testcases()`` whose ops are all in the
rule table through the writer and ncnn, and prints pass / fail / skip per op.
The test suite (tests/targets/ncnn/test_conformance.py) runs the same cases and
fails on any case that is neither passing nor in :data:`SKIPS`.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from mconv.targets.base import Artifact, BuildOptions

Feeds = dict[str, np.ndarray]


def convert_and_run(
    model: onnx.ModelProto,
    feeds: list[Feeds],
    workdir: Path | None = None,
    options: BuildOptions | None = None,
    threads: int = 1,
) -> tuple[list[Feeds], Artifact]:
    """Write ``model`` with the ncnn target, run it in-process on every feed."""
    from mconv.targets.ncnn.target import NcnnTarget

    target = NcnnTarget()
    options = options or BuildOptions()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mconv-ncnn-")
        workdir = Path(tmp.name)
    try:
        art = target.write(model, workdir, "model", options)
        runner = target.runner(art, threads=threads)
        runner.load()
        outs = [runner.infer(f) for f in feeds]
        return outs, art
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_onnxruntime(model: onnx.ModelProto, feeds: list[Feeds]) -> list[Feeds]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, f))) for f in feeds]


# ---------------------------------------------------------------------------
# ONNX node test cases

# Cases whose ops are in the rule table but which are not expected to pass,
# with the reason (conformance_skips.py). The test asserts each of these really
# fails, is refused or is not representable, so the table cannot go stale.
from mconv.targets.ncnn.conformance_skips import SKIPS  # noqa: E402


@dataclass
class CaseResult:
    name: str
    ops: tuple[str, ...]
    status: str  # pass | fail | skip
    detail: str = ""


def _case_ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node} | {
        n.op_type for n in model.graph.node for a in n.attribute if a.g.node for n in a.g.node
    }


def load_cases() -> list:
    from onnx.backend.test.case.node import collect_testcases

    return [c for c in collect_testcases() if c.kind == "node"]


def select(cases: list, supported: set[str]) -> list:
    """Cases whose every op is lowered by the rule table."""
    out = []
    for c in cases:
        ops = {n.op_type for n in c.model.graph.node}
        if any(n.domain not in ("", "ai.onnx") for n in c.model.graph.node):
            continue
        if ops and ops <= supported:
            out.append(c)
    return out


def freeze(model: onnx.ModelProto, feeds: Feeds, names: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` where inputs ``names`` are initializers with ``feeds``' values.

    ONNX node tests pass weights, shapes and axes as graph inputs; an exported
    model has them as constants, which is what ncnn (static weights, static
    shapes) needs.
    """
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [vi for vi in m.graph.input if vi.name not in names]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for n in sorted(names):
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(feeds[n]), n))
    return m


# Element types whose values a float32 Mat holds exactly (integers up to 2**24).
_MAT_TYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BOOL,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32, onnx.TensorProto.INT64,
}  # fmt: skip


def representable(case) -> str | None:
    """Why ncnn cannot take this case's inputs or outputs at all, else None.

    ncnn computes in float32: booleans and integers are held as float values, exact
    up to 2**24; larger integers (and uint32/uint64 ranges) are out of reach."""
    for vi in list(case.model.graph.input) + list(case.model.graph.output):
        et = vi.type.tensor_type.elem_type
        if et not in _MAT_TYPES:
            if et == 0:
                return "non-tensor input or output"
            return f"{onnx.TensorProto.DataType.Name(et).lower()} input or output"
    for ds in case.data_sets:
        for arr in list(ds[0]) + list(ds[1]):
            a = np.asarray(arr)
            if a.dtype.kind == "O":
                return "case data is not numeric (object array)"
            if a.dtype.kind in "iu" and a.size and np.abs(a.astype(np.float64)).max() > 2**24:
                return "integers beyond 2**24 (a float32 Mat holds them inexactly)"
    return None


def run_case(case, workdir: Path) -> CaseResult:
    """Convert and run one case; compare with its expected outputs."""
    from mconv.errors import MconvError, UnsupportedOpsError
    from mconv.metrics import compare_arrays

    ops = tuple(sorted({n.op_type for n in case.model.graph.node}))
    why = representable(case)
    if why:
        return CaseResult(case.name, ops, "skip", why)
    model = case.model
    in_names = [vi.name for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}]
    out_names = [o.name for o in model.graph.output]
    try:
        for k, (inputs, expected) in enumerate(case.data_sets):
            feeds = {n: np.asarray(v) for n, v in zip(in_names, inputs)}
            if not feeds or np.asarray(inputs[0]).dtype.kind not in "fiub":
                return CaseResult(case.name, ops, "skip", "first input is not numeric")
            # Non-float inputs after the first (shapes, axes, indices) are constants in
            # real models; the first is data (integers and booleans as float values).
            frozen = {n for n, v in feeds.items() if v.dtype.kind != "f" and n != in_names[0]}
            d = workdir / f"{case.name}_{k}"
            try:
                m = freeze(model, feeds, frozen) if frozen else model
                outs = _convert_run(m, feeds, frozen, d)
            except UnsupportedOpsError as e:
                if "must be constant" not in str(e):
                    raise
                # Weights passed as inputs: freeze every input but the first.
                frozen = set(in_names[1:])
                outs = _convert_run(freeze(model, feeds, frozen), feeds, frozen, d)
            for name, exp in zip(out_names, expected):
                got = outs[name]
                m = compare_arrays(name, np.asarray(exp), got)
                ref = np.asarray(exp, np.float64)
                # Reference values are float32 computed by numpy: allow the
                # FP32 tolerance of the project plus a small absolute floor
                # for outputs that are ~0 everywhere.
                tol = 1e-4 * float(np.abs(ref).max() if ref.size else 0) + 1e-6
                if m.reason or m.max_abs > tol:
                    return CaseResult(case.name, ops, "fail", m.reason or f"max abs {m.max_abs:.3g}")
    except MconvError as e:
        return CaseResult(case.name, ops, "fail", f"refused: {e}")
    except Exception as e:  # report, keep going
        return CaseResult(case.name, ops, "fail", f"{type(e).__name__}: {e}")
    return CaseResult(case.name, ops, "pass")


def _convert_run(model: onnx.ModelProto, feeds: Feeds, frozen: set[str], d: Path) -> Feeds:
    live = {n: v for n, v in feeds.items() if n not in frozen}
    shapes = {n: tuple(v.shape) for n, v in live.items()}
    opts = BuildOptions(input_shapes=shapes)
    outs, _ = convert_and_run(model, [live], d, opts)
    return outs[0]


def run_all(names: list[str] | None = None) -> list[CaseResult]:
    """Run the selected cases in-process (ncnn loads our own files only)."""
    from mconv.targets.ncnn.target import NcnnTarget

    supported = NcnnTarget().supported_ops()
    cases = select(load_cases(), supported)
    if names is not None:
        wanted = set(names)
        cases = [c for c in cases if c.name in wanted]
    results = []
    with tempfile.TemporaryDirectory(prefix="mconv-conf-") as tmp:
        for c in cases:
            r = run_case(c, Path(tmp))
            if r.status == "fail" and c.name in SKIPS:
                r = CaseResult(r.name, r.ops, "skip", SKIPS[c.name])
            results.append(r)
    return results


def run_chunk(names: list[str]) -> list[tuple[str, tuple[str, ...], str, str]]:
    """Child-process entry for :func:`mconv.isolate.call_isolated` (picklable rows)."""
    return [(r.name, r.ops, r.status, r.detail) for r in run_all(names)]


def selected_names() -> list[str]:
    from mconv.targets.ncnn.target import NcnnTarget

    return [c.name for c in select(load_cases(), NcnnTarget().supported_ops())]


def run_isolated(names: list[str] | None = None, chunks: int = 2) -> list[CaseResult]:
    """Run cases in a few child processes, so a native ncnn crash fails one case
    instead of the run: a crashing chunk is split in halves until the case that
    crashes is alone."""
    names = names if names is not None else selected_names()
    size = max(1, -(-len(names) // chunks))
    results: list[CaseResult] = []
    for i in range(0, len(names), size):
        results.extend(_run_part(names[i : i + size]))
    return results


def _run_part(part: list[str]) -> list[CaseResult]:
    from mconv.isolate import IsolatedFailure, call_isolated

    fn = "mconv.targets.ncnn.conformance:run_chunk"
    try:
        rows = call_isolated(fn, {"names": part}, timeout=900, what="conformance chunk")
        return [CaseResult(*r) for r in rows]
    except IsolatedFailure as e:
        if len(part) == 1:
            name = part[0]
            status = "skip" if name in SKIPS else "fail"
            return [CaseResult(name, (), status, SKIPS.get(name, str(e)))]
    half = len(part) // 2
    return _run_part(part[:half]) + _run_part(part[half:])


def summarize(results: list[CaseResult]) -> str:
    per_op: dict[str, list[int]] = {}
    for r in results:
        for op in r.ops:
            row = per_op.setdefault(op, [0, 0, 0])
            row[("pass", "fail", "skip").index(r.status)] += 1
    lines = [f"{'op':<28}{'pass':>6}{'fail':>6}{'skip':>6}"]
    for op in sorted(per_op):
        p, f, s = per_op[op]
        lines.append(f"{op:<28}{p:>6}{f:>6}{s:>6}")
    tot = [sum(1 for r in results if r.status == s) for s in ("pass", "fail", "skip")]
    lines.append(f"{'TOTAL cases':<28}{tot[0]:>6}{tot[1]:>6}{tot[2]:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mconv.targets.ncnn.conformance")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    ap.add_argument("names", nargs="*", help="only these case names")
    args = ap.parse_args(argv)
    results = run_isolated(args.names or None)
    if args.verbose:
        for r in results:
            print(f"{r.status:<5} {r.name} {r.detail}")
    print(summarize(results))
    return 1 if any(r.status == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
