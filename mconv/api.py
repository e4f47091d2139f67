"""The Python API: what the CLI does, as functions that return typed results.

    import mconv

    onnx_file = mconv.export("model.pt", inputs={"input": (1, 3, 224, 224)}).onnx
    built = mconv.build(onnx_file, "ncnn", precision="int8", calib="data/calib/")
    print(built.artifact.main, built.verification.comparison.summary())
    report = mconv.verify(onnx_file, [built.artifact.main])
    assert report.passed
    print(mconv.bench([built.artifact.main]).results[0].median_ms)

Each function raises the typed errors of :mod:`mconv.errors` (``UsageError`` /
``InputError``: exit 2 on the CLI, ``ConversionError``: 1, ``VerificationError``: 3); their
message is the one line the CLI prints. ``verify`` and ``bench`` return a row per artifact
(``passed`` / ``status``) rather than raising for one that fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `import mconv` stays light
    from mconv.results import BenchResult, BuildResult, ExportResult, MultiBuildResult, OptimizeResult, VerifyResult

PathLike = str | Path
Inputs = Mapping[str, Sequence[int]] | Sequence[str] | None
ToleranceLike = Any  # mconv.metrics.Tolerance, or a dict with rtol / atol / min_cos


def _inputs(inputs: Inputs) -> list:
    """``{"input": (1, 3, 224, 224)}`` or ``["input:1x3x224x224[:float32]"]`` -> InputSpecs."""
    from mconv.specs import InputSpec, parse_input_spec

    if not inputs:
        return []
    if isinstance(inputs, Mapping):
        return [InputSpec(name, tuple(int(d) for d in shape)) for name, shape in inputs.items()]
    return [s if isinstance(s, InputSpec) else parse_input_spec(str(s)) for s in inputs]


def _export_options(inputs: Inputs, dynamic, opset, exporter, model_spec, trust_pickle, weights=None, layout=None):
    from mconv.sources import ExportOptions
    from mconv.specs import parse_dynamic

    return ExportOptions(
        model_spec=model_spec,
        inputs=_inputs(inputs),
        dynamic=[d if not isinstance(d, str) else parse_dynamic(d) for d in dynamic or []],
        opset=opset,
        exporter=exporter,
        trust_pickle=trust_pickle,
        weights=Path(weights) if weights else None,
        layout=layout,
    )


def _tolerance(tolerance: ToleranceLike):
    from mconv.errors import UsageError
    from mconv.metrics import Tolerance

    if tolerance is None or isinstance(tolerance, Tolerance):
        return tolerance
    if isinstance(tolerance, Mapping):
        unknown = set(tolerance) - {"rtol", "atol", "min_cos"}
        if unknown:
            raise UsageError(f"tolerance: unknown key(s) {sorted(unknown)}; use rtol, atol, min_cos")
        return Tolerance(rtol=tolerance.get("rtol"), atol=tolerance.get("atol") or 0.0,
                         min_cos=tolerance.get("min_cos"))  # fmt: skip
    raise UsageError(f"tolerance: expected a Tolerance or a dict, got {type(tolerance).__name__}")


def export(
    source: PathLike,
    output: PathLike | None = None,
    *,
    inputs: Inputs = None,
    dynamic: Sequence[str] | None = None,
    opset: int | None = None,
    exporter: str = "auto",
    model_spec: str | None = None,
    trust_pickle: bool = False,
    weights: PathLike | None = None,
    layout: str | None = None,
    verify: bool = True,
    tolerance: ToleranceLike = None,
    keep_failed: bool = False,
) -> ExportResult:
    """A framework's model file -> ONNX, checked and verified against that framework;
    ``output`` defaults to ``./<stem>.onnx``.

    Sources (detected by content): PyTorch (TorchScript, ExportedProgram, state_dict with
    ``model_spec``), PaddlePaddle (``paddle.jit.save`` files or their folder), TensorFlow/Keras
    (SavedModel folder, ``.keras``, ``.h5``; ``layout="nchw"`` for NCHW ONNX inputs), Caffe
    (``.prototxt`` with ``weights`` the ``.caffemodel``, or the pair found by name).
    """
    from mconv.pipeline import VerifyOptions, export_model

    opts = _export_options(inputs, dynamic, opset, exporter, model_spec, trust_pickle, weights, layout)
    checks = VerifyOptions(enabled=verify, tolerance=_tolerance(tolerance), keep_failed=keep_failed)
    return export_model(Path(source), Path(output) if output else None, opts, checks)


def optimize(model: PathLike, output: PathLike | None = None, *, passes: Sequence[str] | None = None) -> OptimizeResult:
    """ONNX -> ONNX through ``passes`` (default: the default pipeline, see ``mconv passes``);
    ``output`` defaults to ``./<stem>.opt.onnx``."""
    from mconv.pipeline import optimize_model

    return optimize_model(Path(model), Path(output) if output else None, list(passes) if passes is not None else None)


def build(
    model: PathLike,
    target: str | Sequence[str],
    output: PathLike | None = None,
    *,
    precision: str = "fp32",
    calib: PathLike | None = None,
    calib_count: int = 300,
    options: Mapping[str, Any] | None = None,
    inputs: Inputs = None,
    dynamic: Sequence[str] | None = None,
    batch: int | None = None,
    passes: Sequence[str] | None = None,
    opset: int | None = None,
    exporter: str = "auto",
    model_spec: str | None = None,
    trust_pickle: bool = False,
    weights: PathLike | None = None,
    layout: str | None = None,
    verify: bool = True,
    verify_inputs: PathLike | None = None,
    tolerance: ToleranceLike = None,
    keep_failed: bool = False,
    timeout: float | None = None,
    image: Any = None,
) -> BuildResult | MultiBuildResult:
    """ONNX or any source :func:`export` reads -> passes -> ``target``'s artifact in ``output`` (default
    ``./<stem>_<target>/``), verified against onnxruntime unless ``verify=False``.

    ``target`` a list (``["ncnn", "openvino"]``): one export and one pass pipeline, then
    each target into ``output/<target>/`` (default ``./<stem>_<target>/``); returns a
    :class:`mconv.results.MultiBuildResult` that records a failed target (``failures``,
    worst ``exit_code``) instead of raising, the other targets still built. ``options``
    then go to the listed targets that declare them (a key none declares: UsageError).

    ``options`` are the target's own (``mconv targets NAME`` lists them), e.g.
    ``{"calib_method": "minmax"}``; ``image`` is a :class:`mconv.data.ImageOptions` for
    image calibration/verification files.
    """
    from mconv.pipeline import BuildRequest, VerifyOptions, build_model, build_models

    names = [target] if isinstance(target, str) else list(target)
    req = BuildRequest(
        path=Path(model),
        target=names[0] if names else "",
        out_dir=Path(output) if output else None,
        precision=precision,
        calib=str(calib) if calib else None,
        calib_count=calib_count,
        image=image,
        passes=list(passes) if passes is not None else None,
        export=_export_options(inputs, dynamic, opset, exporter, model_spec, trust_pickle, weights, layout),
        verify=VerifyOptions(
            enabled=verify,
            inputs=str(verify_inputs) if verify_inputs else None,
            tolerance=_tolerance(tolerance),
            keep_failed=keep_failed,
            timeout=timeout,
        ),
        batch=batch,
        target_options=dict(options or {}),
    )
    return build_model(req) if isinstance(target, str) else build_models(req, names)


def verify(
    source: PathLike,
    artifacts: Sequence[PathLike],
    *,
    inputs: PathLike | None = None,
    samples: int | None = None,
    tolerance: ToleranceLike = None,
    timeout: float | None = None,
    locate: bool = False,
    input_shapes: Inputs = None,
    image: Any = None,
    model_spec: str | None = None,
    trust_pickle: bool = False,
) -> VerifyResult:
    """Each artifact (any file a registered target recognises) against ``source`` run by
    onnxruntime; ``locate`` finds the first diverging layer of a failing artifact."""
    from mconv.verification import DEFAULT_SAMPLES, VerifyRequest
    from mconv.verification import verify as verify_artifacts

    specs = _inputs(input_shapes)
    req = VerifyRequest(
        source=Path(source),
        artifacts=[Path(a) for a in artifacts],
        inputs=str(inputs) if inputs else None,
        samples=samples or DEFAULT_SAMPLES,
        tolerance=_tolerance(tolerance),
        timeout=timeout,
        locate=locate,
        shapes={s.name: s.shape for s in specs},
        image=image,
        export=_export_options(specs, None, None, "auto", model_spec, trust_pickle),
    )
    from mconv.results import VerifyResult

    return VerifyResult.from_json(verify_artifacts(req))


def bench(
    artifacts: Sequence[PathLike],
    *,
    threads: int | None = None,
    warmup: int | None = None,
    iters: int | None = None,
    seconds: float | None = None,
    batch: int | None = None,
) -> BenchResult:
    """Time each artifact in its own child process, with the same inputs for all."""
    from mconv.benchmark import DEFAULT_WARMUP, BenchRequest
    from mconv.benchmark import bench as run_bench

    req = BenchRequest(
        artifacts=[Path(a) for a in artifacts],
        threads=threads,
        warmup=DEFAULT_WARMUP if warmup is None else warmup,
        iters=iters,
        seconds=seconds,
        batch=batch,
    )
    from mconv.results import BenchResult

    return BenchResult.from_json(run_bench(req))
