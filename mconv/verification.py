"""Verification of converted artifacts against their source, and locating where they diverge.

One implementation shared by ``mconv build`` (its verification step calls
:func:`check_artifact`) and ``mconv verify``:

* :func:`recognise_artifact` asks every registered target's ``recognise()`` whether a
  file is one of its artifacts (by content, not by trusting the suffix alone);
* :func:`check_artifact` runs samples through an artifact and compares them with the
  reference outputs, with the metrics and tolerances of :mod:`mconv.metrics`;
* :func:`verify` does that for several artifacts, each runtime in its own child
  process, so that a native crash or a hang fails that artifact's row only;
* :func:`locate` finds the first tensor (in the source graph's topological order)
  where a failing artifact leaves the tolerance; the artifact's target marks the
  intermediate tensors (``Target.probe_artifact``: for ONNX every intermediate value
  becomes a graph output, for ncnn the blobs the writer mapped from ONNX names are
  extracted, for OpenVINO the ports that keep ONNX names become results).

Everything format-specific (input metadata, recognising files, intermediate outputs,
runners) is the target's, reached through the registry.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mconv.data import ImageOptions
from mconv.errors import ConversionError, InputError, MconvError, UsageError, VerificationError
from mconv.graphinfo import inferred_copy, node_label, toposorted, with_outputs
from mconv.metrics import Comparison, OutputMetrics, Tolerance, apply_tolerance, compare_arrays, compare_outputs
from mconv.noise import RoundingFloor
from mconv.targets.base import Artifact

Feeds = dict[str, np.ndarray]

DEFAULT_SAMPLES = 2


def artifact_kinds() -> str:
    """The artifact files the registered targets recognise, for messages."""
    from mconv.targets import all_targets

    kinds = []
    for entry in all_targets():
        try:
            kind = "" if entry.error else entry.load().artifact_kind
        except Exception:  # a broken plugin is listed by `mconv targets`, not here
            kind = ""
        kinds.append(kind or "")
    return ", ".join(k for k in kinds if k)


# ---------------------------------------------------------------------------
# Recognising artifacts


def recognise_artifact(path: str | Path) -> Artifact:
    """The artifact ``path`` is, asking each registered target in turn.

    Raises:
        InputError: the file is missing, is not any target's artifact, or lacks its
            weights (raised by the target that recognised it).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the artifact's main file ({artifact_kinds()})")
    found = find_artifact(path)
    if found is None:
        raise InputError(f"{path}: not an artifact mconv recognises ({artifact_kinds()})")
    return found


def find_artifact(path: Path) -> Artifact | None:
    """The artifact the file ``path`` is, or None when no registered target recognises it.

    Raises:
        InputError: a target recognised it but its other files are missing or unreadable.
    """
    from mconv.targets import all_targets

    for entry in all_targets():
        if entry.error:
            continue
        try:
            cls = entry.load()
            found = cls.recognise(path)
        except MconvError:
            raise
        except Exception:  # a broken plugin must not stop the others from recognising
            continue
        if found is not None:
            return found
    return None


def check_inputs(artifact: Artifact, sample: Feeds) -> str | None:
    """A one-line mismatch between ``sample`` and what ``artifact`` takes, or None."""
    from mconv.targets import get_target

    target = get_target(artifact.target)
    specs = target.artifact_inputs(artifact)
    if specs is None:
        return None
    want = [s.name for s in specs]
    if sorted(want) != sorted(sample):
        return f"{artifact.main}: the artifact takes inputs {want}, the source model {sorted(sample)}"
    for s in specs:
        got = sample[s.name].shape
        if s.shape is None:
            continue
        # A runtime without a batch axis: its inputs may drop (or we may add) a leading 1.
        fits = len(s.shape) == len(got) and all(d is None or d == g for d, g in zip(s.shape, got))
        if not fits and int(np.prod([d for d in s.shape if d])) == int(np.prod(got)) and None not in s.shape:
            fits = target.batchless
        if not fits:
            shown = "x".join("?" if d is None else str(d) for d in s.shape)
            return (
                f"{artifact.main}: input '{s.name}' has shape {shown}, the samples "
                f"{'x'.join(map(str, got))}; give matching --inputs or rebuild the artifact with that shape"
            )
    return None


# ---------------------------------------------------------------------------
# One artifact


def check_artifact(
    artifact: Artifact,
    samples: list[Feeds],
    refs: list[Feeds],
    names: list[str],
    tol: Tolerance,
    *,
    timeout: float | None = None,
    isolate: bool | None = None,
    selection: dict[str, str] | None = None,
    floor: RoundingFloor | None = None,
) -> Comparison:
    """Run ``samples`` through ``artifact`` and compare with ``refs`` (the build's and verify's one path).

    ``selection`` and ``floor``: see :func:`mconv.metrics.compare_outputs`.

    Raises:
        IsolatedFailure: the runtime crashed, hung past ``timeout`` or raised in its child.
    """
    from mconv.runner import run_artifact
    from mconv.targets import get_target

    target = get_target(artifact.target)
    feeds = [target.verify_feeds(s) for s in samples]
    gots = run_artifact(artifact, feeds, isolate=isolate, timeout=timeout)
    return compare_outputs(refs, gots, tol, names, selection=selection, floor=floor)


@dataclass
class VerifyRequest:
    source: Path
    artifacts: list[Path]
    inputs: str | None = None  # --inputs: data for the shared loader
    samples: int = DEFAULT_SAMPLES
    tolerance: Tolerance | None = None  # None: by the artifact's precision
    timeout: float | None = None  # None: mconv.limits.runner_timeout of the source
    locate: bool = False
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    image: ImageOptions | None = None
    export: Any = None  # sources.ExportOptions for PyTorch sources


def _floats(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _samples(model: onnx.ModelProto, req: VerifyRequest) -> tuple[list[Feeds], str]:
    from mconv.data import load_samples, random_feeds
    from mconv.graphinfo import graph_inputs

    infos = graph_inputs(model)
    if req.inputs:
        origin = req.inputs
        if req.image is not None:
            im = req.image
            origin += f" (for images: mean {_floats(im.mean)}, std {_floats(im.std)}"
            origin += f", size {im.size[0]}x{im.size[1]})" if im.size else ")"
        return load_samples(req.inputs, infos, limit=req.samples, image=req.image, option="--inputs"), origin
    return random_feeds(infos, seed=0, count=req.samples, shapes=req.shapes), "random (seed 0)"


def _row(artifact: Artifact) -> dict[str, Any]:
    return {
        "path": str(artifact.main),
        "target": artifact.target,
        "precision": artifact.precision,
        "status": "error",
        "passed": False,
        "error": None,
        "exit_code": None,
        "tolerance": None,
        "outputs": [],
        "seconds": None,
    }


def _verify_one(
    artifact: Artifact,
    model: onnx.ModelProto,
    samples: list[Feeds],
    refs: list[Feeds],
    names: list[str],
    req: VerifyRequest,
    selection: dict[str, str] | None = None,
    floor: RoundingFloor | None = None,
) -> dict[str, Any]:
    from mconv.isolate import IsolatedFailure
    from mconv.targets import get_target

    row = _row(artifact)
    try:
        target = get_target(artifact.target)
    except MconvError as e:
        row.update(error=e.message, exit_code=e.exit_code)
        return row
    tol = req.tolerance or target.default_tolerance(artifact.precision)
    row["tolerance"] = tol.describe()
    missing = target.missing_runtime_message()
    if missing:
        row.update(status="no-runtime", error=missing, exit_code=1)
        return row
    mismatch = check_inputs(artifact, samples[0])
    if mismatch:
        row.update(error=mismatch, exit_code=2)
        return row
    t0 = time.perf_counter()
    try:
        comp = check_artifact(
            artifact, samples, refs, names, tol, timeout=req.timeout, isolate=True, selection=selection, floor=floor
        )
    except IsolatedFailure as e:
        status = {"signal": "crashed", "timeout": "timeout"}.get(e.kind, "error")
        row.update(status=status, error=e.message, exit_code=3 if status != "error" else e.exit_code)
        return row
    except MconvError as e:
        row.update(error=e.message, exit_code=e.exit_code)
        return row
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 3)
    row["outputs"] = [o.to_json() for o in comp.outputs]
    row["passed"] = comp.passed
    row["status"] = "passed" if comp.passed else "failed"
    row["exit_code"] = 0 if comp.passed else 3
    if not comp.passed:
        row["error"] = comp.summary()
        row["advice"] = comp.advice()
        if req.locate:
            try:
                row["locate"] = locate(model, artifact, samples, tol, timeout=req.timeout)
            except MconvError as e:
                row["locate"] = {"found": False, "error": e.message}
    return row


def verify(req: VerifyRequest) -> dict[str, Any]:
    """Verify every artifact in ``req`` against its source; returns the JSON-ready report.

    Errors that concern the whole run (a missing file, an artifact without its weights,
    ``--inputs`` that do not fit the source) raise at once; per-artifact failures
    (tolerance, crash, timeout, missing runtime, inputs the artifact does not take)
    become that artifact's row, and the others still run. :func:`raise_for_report`
    turns the report into the exit status.
    """
    from mconv.limits import BIG_MODEL_BYTES, runner_timeout
    from mconv.modelio import model_nbytes
    from mconv.noise import RoundingFloor, probe_outputs_isolated
    from mconv.runner import reference_outputs_isolated
    from mconv.selection import selected_outputs
    from mconv.sources import ExportOptions, load_model_any

    if not req.artifacts:
        raise UsageError("give at least one ARTIFACT to verify")
    if req.samples < 1:
        raise UsageError("--samples must be >= 1")
    artifacts = [recognise_artifact(p) for p in req.artifacts]
    model, info = load_model_any(Path(req.source), req.export or ExportOptions())
    samples, origin = _samples(model, req)
    # Runner children get a timeout scaled to the model unless given; --timeout is per
    # artifact, so the reference is not held to a shorter one than the scaled default.
    scaled = runner_timeout(model)
    req = replace(req, timeout=req.timeout or scaled)
    ref_timeout = max(req.timeout, scaled)
    refs, names = reference_outputs_isolated(model, samples, timeout=ref_timeout)
    selection = selected_outputs(model)
    floor = RoundingFloor(lambda: probe_outputs_isolated(model, samples, timeout=ref_timeout))
    fp32 = req.tolerance is None and any(a.precision == "fp32" for a in artifacts)
    if fp32 and model_nbytes(model) < BIG_MODEL_BYTES:
        floor.probe()  # verify reports every FP32 output's floor, passing or not (big models: when needed)
    results = [_verify_one(art, model, samples, refs, names, req, selection, floor) for art in artifacts]
    return {
        "command": "verify",
        "source": str(req.source),
        "source_kind": info["kind"],
        "reference": "onnxruntime",
        "inputs": origin,
        "samples": len(samples),
        "floor_probe": floor.error or ("measured" if floor.measured else "not needed"),
        "passed": all(r["passed"] for r in results),
        "results": results,
    }


def raise_for_report(report: dict[str, Any]) -> None:
    """Raise the error a finished verify report calls for (nothing when all passed).

    Inputs an artifact does not take are the user's to fix first (exit 2); then
    artifacts that miss their tolerance, crash or hang (exit 3); then artifacts whose
    runtime is missing or that fail to load (exit 1).
    """
    bad = [r for r in report["results"] if not r["passed"]]
    if not bad:
        return
    for code in (2, 3):
        hit = [r for r in bad if r["exit_code"] == code]
        if hit:
            break
    else:
        hit, code = bad, bad[0]["exit_code"] or 1
    first = hit[0]
    more = f" (and {len(bad) - 1} more artifact(s) failed)" if len(bad) > 1 else ""
    if code == 3:
        msg = f"{first['path']} ({first['target']}): {first['status']}: {first['error']}{more}"
        loc = first.get("locate") or {}
        if loc.get("found"):
            msg += f"; first divergence at {loc['node']} ({loc['op_type']}), output '{loc['tensor']}'"
            if loc.get("span"):
                msg += " (fused in the artifact: " + " -> ".join(loc["span"]) + ")"
        elif first.get("advice"):
            msg += f"; {first['advice']}"
        raise VerificationError(msg, report)
    if code == 2:
        err: MconvError = InputError(f"{first['error']}{more}")
    else:
        err = MconvError(f"{first['path']} ({first['target']}): {first['error']}{more}", exit_code=code)
    raise err.with_report(report)  # --json prints it inside the error object


# ---------------------------------------------------------------------------
# Locating the first diverging layer

Producers = dict[str, tuple[int, onnx.NodeProto]]  # tensor name -> (topological index, node)
Divergence = tuple[str, int, onnx.NodeProto, OutputMetrics]  # (tensor, index, node, its metrics)


def locate(
    model: onnx.ModelProto,
    artifact: Artifact,
    samples: list[Feeds],
    tol: Tolerance,
    *,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The first source node whose output, as the artifact computes it, misses ``tol``.

    Tensors are matched by ONNX name; only those present in both the source and the
    artifact are compared, in the source graph's topological order. The result names
    the node, its op type, the tensor, the error after it (its output) and before it
    (the worst of its compared inputs; graph inputs count as exact).

    Raises:
        ConversionError: the artifact's target offers no intermediate tensors.
    """
    from mconv.runner import reference_outputs

    src = inferred_copy(model)
    producer = _producers(toposorted(src.graph))
    candidates = list(producer)
    got, art_nodes = _intermediates(artifact, candidates, samples, timeout)
    shared = [n for n in candidates if all(n in g for g in got)]
    if not shared:
        raise ConversionError(
            f"{artifact.main}: no intermediate tensor of the artifact carries a name from the source "
            "graph, so --locate cannot match layers"
        )
    probe_model = with_outputs(src, shared)
    refs, _ = reference_outputs(probe_model, samples)
    floors = _tensor_floor_probes(probe_model, samples, tol)
    metrics, compared, first = _compare_shared(shared, refs, got, floors, tol, producer)
    result: dict[str, Any] = {"found": first is not None, "compared": len(compared), "tensors": compared}
    if first is None:
        result["message"] = (
            f"all {len(compared)} tensor(s) shared with the artifact are within {tol.describe()}; "
            "the divergence lies in tensors the artifact renamed or fused away"
        )
        return _json_safe_floats(result)
    graph_inputs = {i.name for i in src.graph.input}
    result.update(_divergence(first, metrics, producer, graph_inputs, art_nodes))
    return _json_safe_floats(result)


def _producers(order: list[onnx.NodeProto]) -> Producers:
    """Each tensor's producing node and its index in ``order`` (the first producer wins)."""
    producer: Producers = {}
    for i, node in enumerate(order):
        for o in node.output:
            if o:
                producer.setdefault(o, (i, node))
    return producer


def _tensor_floor_probes(probe_model: onnx.ModelProto, samples: list[Feeds], tol: Tolerance) -> list[Feeds] | None:
    """The rounding-floor probe's values of every tensor, when ``tol`` uses floors."""
    if not (tol.floor_k and tol.rtol is not None):
        return None
    from mconv.noise import probe_outputs

    # Each tensor gets its own rounding floor, as the outputs do: otherwise a noisy
    # model's first tensor above 1e-4 would be named, not the first real divergence.
    return probe_outputs(probe_model, samples)


def _tensor_floor(name: str, refs: list[Feeds], floors: list[Feeds]) -> float | None:
    """The relative error of tensor ``name`` under the floor probe, if it is finite."""
    fm = _compare_tensor(name, [r[name] for r in refs], [f[name] for f in floors], Tolerance())
    return fm.rel if fm is not None and not fm.reason and math.isfinite(fm.rel) else None


def _compare_shared(
    shared: list[str],
    refs: list[Feeds],
    got: list[Feeds],
    floors: list[Feeds] | None,
    tol: Tolerance,
    producer: Producers,
) -> tuple[dict[str, OutputMetrics], list[dict[str, Any]], Divergence | None]:
    """Compare the ``shared`` tensors in order: metrics by name, the report rows, and the first miss."""
    metrics: dict[str, OutputMetrics] = {}
    compared: list[dict[str, Any]] = []
    first = None
    for name in shared:
        floor = None if floors is None else _tensor_floor(name, refs, floors)
        m = _compare_tensor(name, [r[name] for r in refs], [g[name] for g in got], tol, floor)
        if m is None:
            continue
        metrics[name] = m
        idx, node = producer[name]
        compared.append(
            {
                "tensor": name,
                "node": node_label(node, idx),
                "op_type": node.op_type,
                "passed": m.passed,
                "rel": m.rel,
                "floor": m.floor,
                "cosine": m.cosine,
            }
        )
        if first is None and not m.passed:
            first = (name, idx, node, m)
    return metrics, compared, first


def _divergence(
    first: Divergence,
    metrics: dict[str, OutputMetrics],
    producer: Producers,
    graph_inputs: set[str],
    art_nodes: dict[str, tuple[str, str]],
) -> dict[str, Any]:
    """The result fields naming where the divergence starts, and the error before and after it."""
    name, idx, node, m = first
    fused = _uncompared_ancestors(node, metrics, producer)
    worst_before = _worst_before(node, fused, metrics, graph_inputs)
    found: dict[str, Any] = {
        "node": node_label(node, idx),
        "op_type": node.op_type,
        "tensor": name,
        "index": idx,
        "before": None if worst_before is None else _brief(worst_before, node_input=worst_before.name),
        "after": _brief(m),
    }
    if fused:
        # The tensors between the last matching one and this node were fused away in the
        # artifact: the divergence starts somewhere in that span, so name its first node.
        j0, n0 = fused[0]
        found.update(node=node_label(n0, j0), op_type=n0.op_type, index=j0)
        found["span"] = [f"{node_label(n, j)} ({n.op_type})" for j, n in fused] + [
            f"{node_label(node, idx)} ({node.op_type})"
        ]
    art_node = art_nodes.get(name)
    if art_node and art_node != (found["node"], node.op_type):
        found["artifact_node"] = {"name": art_node[0], "op_type": art_node[1]}
    return found


def _worst_before(
    node: onnx.NodeProto,
    fused: list[tuple[int, onnx.NodeProto]],
    metrics: dict[str, OutputMetrics],
    graph_inputs: set[str],
) -> OutputMetrics | None:
    """The worst compared input of ``node`` (of the fused span's nodes, if any); graph inputs are exact."""
    before = []
    for x in [i for _, n in fused for i in n.input] if fused else node.input:
        if x in metrics:
            before.append(metrics[x])
        elif x in graph_inputs:
            before.append(compare_arrays(x, np.zeros(1), np.zeros(1)))
    return max(before, key=lambda b: b.rel, default=None)


def _uncompared_ancestors(node, metrics, producer) -> list[tuple[int, onnx.NodeProto]]:
    """Source nodes feeding ``node`` whose outputs the artifact does not expose, in order."""
    found: dict[int, onnx.NodeProto] = {}
    stack = [x for x in node.input if x]
    seen: set[str] = set()
    while stack:
        t = stack.pop()
        if t in seen or t in metrics or t not in producer:
            continue
        seen.add(t)
        j, n = producer[t]
        found[j] = n
        stack.extend(x for x in n.input if x)
    return sorted(found.items())


def _compare_tensor(
    name: str, refs: list[np.ndarray], gots: list[np.ndarray], tol: Tolerance, floor: float | None = None
):
    """Metrics over all samples, or None when the artifact keeps the tensor in another layout."""
    r = [np.asarray(x) for x in refs]
    g = [np.asarray(x) for x in gots]
    if any(a.size != b.size for a, b in zip(r, g)):
        return None
    if any(a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub" for a, b in zip(r, g)):
        return None
    ref = np.concatenate([a.reshape(-1) for a in r])
    got = np.concatenate([b.reshape(-1) for b in g])
    m = compare_arrays(name, ref, got)
    m.shape = list(r[0].shape)
    return apply_tolerance(m, tol, floor)


def _brief(m, node_input: str | None = None) -> dict[str, Any]:
    d = {"max_abs": m.max_abs, "rel": m.rel, "mean_abs": m.mean_abs, "cosine": m.cosine}
    if node_input is not None:
        d["tensor"] = node_input
    return d


def _json_safe_floats(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _json_safe_floats(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_safe_floats(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def _intermediates(
    artifact: Artifact, names: list[str], samples: list[Feeds], timeout: float | None
) -> tuple[list[Feeds], dict[str, tuple[str, str]]]:
    """Per sample, the artifact's values of those ``names`` it has; and, where known, the
    artifact's own node (name, op type) producing each. The target marks the outputs."""
    from mconv.runner import run_artifact
    from mconv.targets import get_target

    target = get_target(artifact.target)
    with tempfile.TemporaryDirectory(prefix="mconv-locate-") as tmp:
        probe, produced = target.probe_artifact(artifact, names, Path(tmp))
        gots = run_artifact(probe, samples, isolate=True, timeout=timeout)
    return gots, produced
