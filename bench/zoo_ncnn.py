"""mconv's ncnn writer vs pnnx on the real-world zoo (run by hand, never a test).

For every model exported by ``bench/zoo_models.py`` (``bench/.zoo/<name>/``):

1. mconv: ``mconv build model.onnx --target ncnn`` with default options (its own
   verification included; ``--keep-failed`` so that a refused artifact can still be
   judged), in a fresh process: exit code, one-line error, wall time, and anything a
   successful build printed on stderr (there should be nothing: third-party noise).
2. pnnx: ``pnnx model.onnx inputshape=... fp16=0``, wall time (cached in the
   model's folder; ``--rebuild-pnnx`` redoes it). ``fp16=0`` keeps FP32 weights (its
   default stores FP16 ones, ~1e-3 error on deep random-weight nets) so that *wrong*
   means a conversion error; on x86 ncnn expands FP16 weights to FP32 at load, so the
   latency is the same either way.
3. Both artifacts run by the same ncnn code (``bench/ncnn_timing.py``, child process,
   FP32, vulkan off) on the zoo's seeded inputs, compared with onnxruntime on the
   ONNX file. *right*: every output within cos >= 0.999 and rel <= 1e-2, or within twice
   the reference's own floor where that is larger (rel between onnxruntime with all graph
   optimisations and with none: on an ill-conditioned random-weight net the reference
   moves by more than 1e-2 itself) (the same lenient rule for both; mconv's own gate is
   stricter); outputs behind a TopK are also compared as
   matched rows (each reference row with its nearest artifact row) — the note says
   which rule judged a model. *wrong*: an artifact that runs but misses that; for
   mconv, *written wrong* means exit 0 and wrong (a refused artifact, exit 3, is a
   caught one).
4. Latency of both in fresh processes alternating the load order (``--procs``,
   default 4), the mconv/pnnx ratio as the geometric mean, and with ``--control``
   pnnx against itself the same way (``ctrl``: the noise floor). For every model
   where mconv is slower, the layer-type histogram difference is printed.

Raw results: ``bench/results/zoo_ncnn/<model>.json``; the table:
``bench/results/zoo_ncnn.md``.

Usage: .venv-bench/bin/python bench/zoo_ncnn.py [--only a,b] [--family timm] [--no-timing]
       [--timing-only] [--control] [--procs 4] [--threads 2] [--rebuild-pnnx] [--table-only]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import mconv  # noqa: F401  (first: it turns off onnxruntime's and OpenVINO's telemetry, here and in children)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ncnn_timing import NetSpec, outputs_isolated, timed_fresh

HERE = Path(__file__).resolve().parent
ZOO = HERE / ".zoo"
RESULTS = HERE / "results" / "zoo_ncnn"
RIGHT_COS, RIGHT_REL = 0.999, 1e-2
SELECTION_OPS = {"TopK", "NonMaxSuppression", "ArgMax", "ArgMin"}


# ----------------------------------------------------------------------------- reference


def reference(model_dir: Path, with_floor: bool = False) -> tuple[list[np.ndarray], dict, list[float]]:
    """onnxruntime's outputs (all graph optimisations) and the feeds; ``with_floor`` also runs
    it with no graph optimisation and gives, per output, the reference's own floor (the rel
    between the two), else the floors are empty."""
    import onnxruntime as ort

    with np.load(model_dir / "inputs.npz") as z:
        feeds = {k: z[k] for k in z.files}
    levels = [ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
    if with_floor:
        levels.append(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    runs = []
    for level in levels:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = level
        sess = ort.InferenceSession(str(model_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
        runs.append(sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()}))
    floors = [metrics(a, b)["rel"] for a, b in zip(*runs)] if with_floor else []
    return runs[0], feeds, floors


def selection_outputs(model_dir: Path) -> set[int]:
    """Indices of graph outputs that depend on a TopK/NMS/ArgMax (walk producers back)."""
    import onnx

    m = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    producer = {o: n for n in m.graph.node for o in n.output}
    hit = set()
    for k, out in enumerate(m.graph.output):
        stack, seen = [out.name], set()
        while stack:
            t = stack.pop()
            n = producer.get(t)
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            if n.op_type in SELECTION_OPS:
                hit.add(k)
                break
            stack.extend(i for i in n.input if i)
    return hit


# ----------------------------------------------------------------------------- judging


def metrics(ref: np.ndarray, got: np.ndarray) -> dict:
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    if r.size != g.size:
        return {"rel": math.inf, "cos": 0.0, "why": f"size {g.size} != {r.size}"}
    if not np.isfinite(g).all():
        return {"rel": math.inf, "cos": 0.0, "why": "non-finite values"}
    scale = max(float(np.abs(r).max()) if r.size else 0.0, 1e-30)
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    cos = 1.0 if nr == ng == 0 else float(np.dot(r, g) / max(nr * ng, 1e-300))
    return {"rel": float(np.abs(r - g).max() / scale) if r.size else 0.0, "cos": cos}


def matched_rows(ref: np.ndarray, got: np.ndarray) -> dict:
    """Metrics after pairing each reference row (last axis = one detection) with its
    nearest artifact row: reordered selections compare equal."""
    if ref.size != got.size or ref.ndim < 2:
        return metrics(ref, got)
    r = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    g = got.reshape(-1, ref.shape[-1]).astype(np.float64)
    d = ((r[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    return metrics(r, g[d.argmin(axis=1)])


def judge(
    refs: list[np.ndarray], gots: list[np.ndarray], selected: set[int], floors: list[float] | None = None
) -> dict:
    outs, rule = [], "element-wise"
    for k, ref in enumerate(refs):
        if k >= len(gots):
            outs.append({"rel": math.inf, "cos": 0.0, "why": "output missing"})
            continue
        m = metrics(ref, gots[k])
        if floors and floors[k] > 0:
            m["floor"] = floors[k]
        if k in selected and not _ok(m):
            m = {**matched_rows(ref, gots[k]), "rule": "matched rows"}
            rule = "matched rows"
        outs.append(m)
    worst = max(outs, key=lambda m: (not _ok(m), m["rel"]))
    return {"right": all(_ok(m) for m in outs), "rel": worst["rel"], "cos": worst["cos"], "rule": rule,
            "outputs": outs}  # fmt: skip


def _ok(m: dict) -> bool:
    bound = max(RIGHT_REL, 2 * m.get("floor", 0.0))
    return m.get("cos", 0) >= RIGHT_COS and m.get("rel", math.inf) <= bound


# ----------------------------------------------------------------------------- converters


def run_mconv(model_dir: Path, work: Path) -> dict:
    out = work / "mconv"
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).parent / "mconv"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(exe), "build", str(model_dir / "model.onnx"), "--target", "ncnn", "-o", str(out),
                               "--keep-failed", "--json"], capture_output=True, text=True, timeout=1800)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"exit": None, "error": "timed out after 1800 s", "conv_s": time.perf_counter() - t0}
    res = {"exit": proc.returncode, "conv_s": time.perf_counter() - t0}
    if proc.returncode == 0 and proc.stderr.strip():  # a successful build prints nothing on stderr
        res["stderr"] = proc.stderr.strip()[:300]
    try:
        rep = json.loads(proc.stdout)
    except ValueError:
        rep = {}
    if proc.returncode != 0:
        res["error"] = rep.get("error") or (proc.stderr.strip().splitlines() or ["?"])[-1]
    param = out / "model.param"
    if param.is_file():
        res["param"] = str(param)
    if proc.returncode in (0, 3):
        res["verification"] = rep.get("verification") or rep.get("report", {}).get("verification") or {}
    return res


def mconv_net(param: Path) -> tuple[NetSpec, dict]:
    """The NetSpec of an mconv artifact (from its sidecar) and how to map outputs back."""
    meta = json.loads(param.with_suffix(".mconv.json").read_text())
    feeds = {i["blob"]: i["name"] for i in meta["inputs"]}
    return NetSpec(str(param), str(param.with_suffix(".bin")), feeds, [o["blob"] for o in meta["outputs"]]), meta


def pnnx_shapes(feeds: dict, names: list[str]) -> str:
    parts = []
    for n in names:
        x = feeds[n]
        suffix = "i64" if x.dtype == np.int64 else "i32" if x.dtype == np.int32 else ""
        parts.append(f"[{','.join(map(str, x.shape))}]{suffix}")
    return ",".join(parts)


def run_pnnx(model_dir: Path, work: Path, feeds: dict, in_names: list[str], rebuild: bool) -> dict:
    pdir = work / "pnnx"
    param = pdir / "model.ncnn.param"
    cached = pdir / "result.json"
    if cached.is_file() and not rebuild:
        return json.loads(cached.read_text())
    shutil.rmtree(pdir, ignore_errors=True)
    pdir.mkdir(parents=True)
    shutil.copy(model_dir / "model.onnx", pdir / "model.onnx")
    exe = shutil.which("pnnx") or str(Path(sys.executable).parent / "pnnx")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([exe, "model.onnx", f"inputshape={pnnx_shapes(feeds, in_names)}", "fp16=0"], cwd=pdir,
                              capture_output=True, text=True, timeout=1800)  # fmt: skip
        res = {"exit": proc.returncode, "conv_s": time.perf_counter() - t0}
        if proc.returncode != 0 or not param.is_file():
            res["error"] = ((proc.stderr or proc.stdout).strip().splitlines() or ["?"])[-1][:160]
    except subprocess.TimeoutExpired:
        res = {"exit": None, "error": "timed out", "conv_s": time.perf_counter() - t0}
    if param.is_file():
        res["param"] = str(param)
    for f in pdir.iterdir():  # keep only what ncnn runs
        if f.name not in ("model.ncnn.param", "model.ncnn.bin"):
            f.unlink()
    cached.write_text(json.dumps(res))
    return res


def pnnx_net(param: Path, n_in: int, n_out: int) -> NetSpec:
    return NetSpec(str(param), str(param.with_suffix(".bin")), {f"in{i}": f"k{i}" for i in range(n_in)},
                   [f"out{i}" for i in range(n_out)])  # fmt: skip


def layer_histogram(param: str) -> Counter:
    c: Counter = Counter()
    for line in Path(param).read_text().splitlines()[2:]:
        if line.strip():
            c[line.split()[0]] += 1
    return c


# ----------------------------------------------------------------------------- one model


def mat_inputs(feeds: dict, names: list[str], in_shapes: dict[str, tuple], kinds: dict[str, str]) -> dict:
    """Inputs as each side's Mat arrays: float32, or int32 bits for integer ids. ``kinds``
    is the mconv sidecar's ``feed`` per input (an attention mask is fed as float values;
    as int32 bits a 1 reads as 1.4e-45, which a product of two masks flushes to 0)."""
    out = {}
    for k, n in enumerate(names):
        x = feeds[n]
        bits = x.dtype.kind in "iu" and kinds.get(n, "int32") == "int32"
        x = x.astype(np.int32).view(np.float32) if bits else x.astype(np.float32)
        shape = in_shapes.get(n) or (x.shape[1:] if x.ndim > 1 and x.shape[0] == 1 else x.shape)
        out[n] = out[f"k{k}"] = np.ascontiguousarray(x.reshape(shape))
    return out


def retime_model(name: str, args) -> dict:
    """Time again the artifacts a previous run judged (``--timing-only``): no rebuild."""
    row = json.loads((RESULTS / f"{name}.json").read_text())
    if not all(row[s].get("right") for s in ("mconv", "pnnx")):
        return row
    model_dir = ZOO / name
    work = model_dir / "ncnn_bench"
    refs, _, _ = reference(model_dir)
    spec, _ = mconv_net(Path(row["mconv"]["param"]))
    nets = {"mconv": spec, "pnnx": pnnx_net(Path(row["pnnx"]["param"]), len(row.get("inputs", [])) or 1, len(refs))}
    return _time(row, nets, work, args)


@functools.cache
def host_info() -> str:
    """Where the timing ran: CPU (name, family/model, AVX-512 or not), cores, ncnn and pnnx
    versions. Ratios move from one CPU to another (ncnn's kernel choices are per host)."""
    import importlib.metadata
    import os

    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            cpu.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    flags = cpu.get("flags", "").split()
    name = f"{cpu.get('model name', '?')} (family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}"
    name += ", AVX-512)" if "avx512f" in flags else ")"
    vers = []
    for pkg in ("ncnn", "pnnx"):
        try:
            vers.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"{name}, {os.cpu_count()} cores, {', '.join(vers)}"


def _time(row: dict, nets: dict, work: Path, args) -> dict:
    t = timed_fresh(nets["mconv"], nets["pnnx"], str(work / "mat_inputs.npz"), threads=args.threads,
                    procs=args.procs, budget_s=args.budget)  # fmt: skip
    row.update(ms_mconv=t.ms["a"], ms_pnnx=t.ms["b"], ratio=t.ratio, spread=t.spread, host=host_info())
    row.pop("layers_diff", None)
    if args.control:
        c = timed_fresh(nets["pnnx"], nets["pnnx"], str(work / "mat_inputs.npz"), threads=args.threads,
                        procs=args.procs, budget_s=args.budget)  # fmt: skip
        row.update(control=c.ratio, control_spread=c.spread)
    if t.ratio > 1.0:
        hm, hp = layer_histogram(nets["mconv"].param), layer_histogram(nets["pnnx"].param)
        row["layers_diff"] = {k: [hm.get(k, 0), hp.get(k, 0)] for k in sorted(set(hm) | set(hp))
                              if hm.get(k, 0) != hp.get(k, 0)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{row['model']}.json").write_text(json.dumps(row, indent=1, default=str) + "\n")
    return row


def bench_model(name: str, args) -> dict:
    model_dir = ZOO / name
    meta = json.loads((model_dir / "meta.json").read_text())
    work = model_dir / "ncnn_bench"
    work.mkdir(exist_ok=True)
    refs, feeds, floors = reference(model_dir, with_floor=True)
    in_names = list(meta["inputs"])
    selected = selection_outputs(model_dir)
    row: dict = {"model": name, "family": meta["family"], "kind": meta["kind"], "selection": sorted(selected)}
    row["mconv"] = run_mconv(model_dir, work)
    row["pnnx"] = run_pnnx(model_dir, work, feeds, in_names, args.rebuild_pnnx)
    nets: dict[str, NetSpec] = {}
    in_shapes: dict = {}
    kinds: dict = {}
    if "param" in row["mconv"]:
        spec, m = mconv_net(Path(row["mconv"]["param"]))
        in_shapes = {i["name"]: _mat_shape(Path(row["mconv"]["param"]), i["blob"]) for i in m["inputs"]}
        kinds = {i["name"]: i.get("feed", "float") for i in m["inputs"]}
        nets["mconv"] = spec
    if "param" in row["pnnx"]:
        nets["pnnx"] = pnnx_net(Path(row["pnnx"]["param"]), len(in_names), len(refs))
    arrays = mat_inputs(feeds, in_names, in_shapes, kinds)
    np.savez(work / "mat_inputs.npz", **arrays)
    for side, net in nets.items():
        try:
            gots = outputs_isolated(net, str(work / "mat_inputs.npz"), args.threads)
            row[side].update(judge(refs, gots, selected, floors))
            row[side]["ran"] = True
        except Exception as e:  # load failure, native crash, missing blob
            row[side].update(ran=False, right=False, run_error=str(e)[:160])
    row["inputs"] = in_names
    both = all(row[s].get("right") for s in ("mconv", "pnnx"))
    if both and not args.no_timing:
        return _time(row, nets, work, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=1, default=str) + "\n")
    return row


def _mat_shape(param: Path, blob: str) -> tuple[int, ...] | None:
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if parts and parts[0] == "Input" and parts[4] == blob:
            kv = dict(p.split("=", 1) for p in parts[5:] if "=" in p)
            dims = [int(kv[k]) for k in ("2", "11", "1", "0") if k in kv]
            return tuple(dims) or None
    return None


# ----------------------------------------------------------------------------- table


def status(side: dict) -> str:
    if side.get("right"):
        return "right"
    if side.get("ran"):
        return "WRONG" if side.get("exit", 0) == 0 else "refused"
    return "no"


def table(rows: list[dict]) -> str:
    head = (f"{'model':<30} {'kind':<24} {'mconv':>7} {'pnnx':>7} {'rel mconv':>9} {'rel pnnx':>9} "
            f"{'ms mconv':>9} {'ms pnnx':>9} {'ratio':>6} {'ctrl':>5} {'conv s':>6} {'pnnx s':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        m, p = r["mconv"], r["pnnx"]

        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"

        lines.append(
            f"{r['model']:<30} {r['kind'][:24]:<24} {status(m):>7} {status(p):>7} {f(m.get('rel'), '9.1e')} "
            f"{f(p.get('rel'), '9.1e')} {f(r.get('ms_mconv'), '9.2f')} {f(r.get('ms_pnnx'), '9.2f')} "
            f"{f(r.get('ratio'), '6.2f')} {f(r.get('control'), '5.2f')} {f(m.get('conv_s'), '6.1f')} "
            f"{f(p.get('conv_s'), '6.1f')}"
        )
    lines += ["", summary(rows), ""]
    for r in rows:
        for side in ("mconv", "pnnx"):
            s = r[side]
            why = s.get("error") or s.get("run_error")
            if not s.get("right") and (why or s.get("ran")):
                lines.append(f"  {r['model']} {side}: {why or ''} (rel {s.get('rel', '-')}, cos {s.get('cos', '-')})"
                             [:300])  # fmt: skip
        if r.get("layers_diff"):
            diff = ", ".join(f"{k} {a}/{b}" for k, (a, b) in r["layers_diff"].items())
            lines.append(f"  {r['model']} layers mconv/pnnx: {diff}"[:400])
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    n = len(rows)
    mr = [r for r in rows if r["mconv"].get("right")]
    pr = [r for r in rows if r["pnnx"].get("right")]
    wrong_m = [r["model"] for r in rows if r["mconv"].get("ran") and not r["mconv"].get("right")
               and r["mconv"].get("exit") == 0]  # fmt: skip
    wrong_p = [r["model"] for r in rows if r["pnnx"].get("ran") and not r["pnnx"].get("right")]
    only_p = [r["model"] for r in pr if not r["mconv"].get("right")]
    internal = [r["model"] for r in rows if "internal error" in str(r["mconv"].get("error", ""))]
    noisy = [r["model"] for r in rows if r["mconv"].get("stderr")]
    ratios = [r["ratio"] for r in rows if isinstance(r.get("ratio"), float)]
    ctrl = [r["control"] for r in rows if isinstance(r.get("control"), float)]
    lines = [
        f"models {n}: mconv right {len(mr)}, pnnx right {len(pr)}; written wrong: mconv {len(wrong_m)} "
        f"{wrong_m or ''}, pnnx {len(wrong_p)} {wrong_p or ''}",
        f"pnnx right but mconv not: {only_p or 'none'}; mconv internal errors: {internal or 'none'}; "
        f"stderr of a successful mconv build: {noisy or 'empty'}",
    ]
    if ratios:
        lines.append(f"latency mconv/pnnx on {len(ratios)} models both convert: median {np.median(ratios):.3f}, "
                     f"worst {max(ratios):.3f} ({max(rows, key=lambda r: r.get('ratio') or 0)['model']}), "
                     f"best {min(ratios):.3f}")  # fmt: skip
    if ctrl:
        lines.append(f"noise floor (pnnx vs itself): median {np.median(ctrl):.3f}, "
                     f"range {min(ctrl):.3f}-{max(ctrl):.3f}")  # fmt: skip
    hosts = sorted({r["host"] for r in rows if r.get("host")})
    if hosts:
        lines.append("timed on: " + "; ".join(hosts))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--family", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--procs", type=int, default=4, help="fresh timing processes per model (orders alternate)")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per process")
    ap.add_argument("--control", action="store_true", help="also time pnnx's artifact against itself")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true", help="re-time the artifacts of the last run, no rebuild")
    ap.add_argument("--rebuild-pnnx", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="print the table from bench/results/zoo_ncnn/")
    args = ap.parse_args()
    names = sorted(p.name for p in ZOO.iterdir() if (p / "meta.json").is_file()) if ZOO.is_dir() else []
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    if args.family:
        names = [n for n in names if json.loads((ZOO / n / "meta.json").read_text())["family"] == args.family]
    rows = []
    for n in names:
        if args.table_only:
            if (RESULTS / f"{n}.json").is_file():
                rows.append(json.loads((RESULTS / f"{n}.json").read_text()))
            continue
        t0 = time.perf_counter()
        r = retime_model(n, args) if args.timing_only else bench_model(n, args)
        rows.append(r)
        took = time.perf_counter() - t0
        print(f"{n:<30} mconv {status(r['mconv']):>7}  pnnx {status(r['pnnx']):>7}  ratio "
              f"{r.get('ratio', float('nan')):.3f}  ({took:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    text = table(rows)
    print(text)
    if not args.only and not args.family:
        (HERE / "results" / "zoo_ncnn.md").write_text("```\n" + text + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
