"""Running artifacts and the onnxruntime reference, in-process or in a child process.

One implementation shared by the build step, ``mconv verify`` and ``mconv bench``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from mconv.errors import ConversionError
from mconv.isolate import call_isolated
from mconv.targets import get_target
from mconv.targets.base import Artifact

Feeds = dict[str, np.ndarray]


def _session(model: onnx.ModelProto | str, optimize: bool = True):
    """An onnxruntime CPU session on a ModelProto or on a file path (external data beside it).

    ``optimize=False`` disables every graph optimization (the rounding-floor probe).
    """
    import tempfile

    import onnxruntime as ort

    from mconv.modelio import EXTERNAL_THRESHOLD, model_nbytes, save_onnx

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = ["CPUExecutionProvider"]
    if isinstance(model, str):
        return ort.InferenceSession(model, so, providers=providers)
    if model_nbytes(model) < EXTERNAL_THRESHOLD:
        return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    # Too big for one protobuf: through a file; the session has read it when this returns.
    with tempfile.TemporaryDirectory(prefix="mconv-ref-") as d:
        path = f"{d}/ref.onnx"
        save_onnx(model, path, external=True)
        return ort.InferenceSession(path, so, providers=providers)


def reference_outputs(
    model: onnx.ModelProto | str, samples: list[Feeds], *, optimize: bool = True
) -> tuple[list[Feeds], list[str]]:
    """Run ``model`` (a ModelProto or an .onnx path) with onnxruntime on the CPU.

    Returns the outputs per sample and the output names. ``optimize=False`` runs
    it with onnxruntime's graph optimizations disabled.
    """
    try:
        sess = _session(model, optimize)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"onnxruntime cannot run the source model: {first[:300]}") from e
    names = [o.name for o in sess.get_outputs()]
    wanted = [i.name for i in sess.get_inputs()]
    outs = []
    for feeds in samples:
        try:
            vals = sess.run(None, {k: feeds[k] for k in wanted})
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConversionError(f"onnxruntime failed on the source model: {first[:300]}") from e
        outs.append(dict(zip(names, vals)))
    return outs, names


def reference_outputs_isolated(
    model: str | onnx.ModelProto, samples: list[Feeds], *, timeout: float | None = None
) -> tuple[list[Feeds], list[str]]:
    """:func:`reference_outputs` in a child process, on a file (for models whose weights
    should not be held twice by this process: onnxruntime keeps its own copy) or on a
    ModelProto (sent to the child serialized)."""
    return call_isolated(
        "mconv.runner:reference_outputs", {"model": model, "samples": samples}, timeout=timeout, what="onnxruntime"
    )


def target_ref(name: str) -> str | None:
    """``module:Class`` of a target registered through the API, else None.

    A spawned child starts with the built-ins and entry points only; a target that a
    program (or a test) registered with :func:`mconv.targets.register` is re-registered
    there from this reference by :func:`ensure_target`.
    """
    from mconv.targets import all_targets

    for entry in all_targets():
        if entry.name == name and not isinstance(entry.loader, str) and entry.source == "api":
            cls = entry.loader
            return f"{cls.__module__}:{cls.__qualname__}"
    return None


def ensure_target(name: str, ref: str | None):
    """``get_target(name)``, registering ``ref`` first when this process lacks it."""
    from mconv.errors import UsageError
    from mconv.targets import register

    try:
        return get_target(name)
    except UsageError:
        if not ref:
            raise
    import importlib

    mod, _, attr = ref.partition(":")
    register(getattr(importlib.import_module(mod), attr))
    return get_target(name)


def infer_all(
    target: str,
    artifact: dict[str, Any],
    samples: list[Feeds],
    threads: int | None = None,
    target_ref: str | None = None,
) -> list[Feeds]:
    """Load the artifact's runner and run every sample (the body of the child process)."""
    t = ensure_target(target, target_ref)
    runner = t.runner(Artifact.from_json(artifact), threads=threads)
    return [runner.infer(s) for s in samples]


def run_artifact(
    artifact: Artifact,
    samples: list[Feeds],
    *,
    isolate: bool | None = None,
    timeout: float | None = None,
    threads: int | None = None,
) -> list[Feeds]:
    """Run ``samples`` through ``artifact``, in a child process unless ``isolate=False``.

    Every runtime runs in a child, not only those that can crash natively: a native
    call (OpenVINO's compile_model on a deep graph, onnxruntime's session) cannot be
    interrupted in this process, so the timeout and SIGINT/SIGTERM could not act on it.
    """
    get_target(artifact.target)  # an unknown target is a usage error here, not in the child
    if isolate is None:
        isolate = True
    if not isolate:
        return infer_all(artifact.target, artifact.to_json(), samples, threads)
    return call_isolated(
        "mconv.runner:infer_all",
        {
            "target": artifact.target,
            "artifact": artifact.to_json(),
            "samples": samples,
            "threads": threads,
            "target_ref": target_ref(artifact.target),
        },
        timeout=timeout,
        what=f"{artifact.target} runner on {artifact.main.name}",
    )
