"""The pipeline that chains the stages: source -> ONNX -> passes -> target -> verify.

Each public function here backs one CLI command (and one function of :mod:`mconv.api`) and
returns its typed result (:mod:`mconv.results`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from mconv.data import ImageOptions, calibration_warnings, load_samples, random_feeds
from mconv.errors import ConversionError, UnsupportedOpsError, UsageError, VerificationError
from mconv.fsutil import StagingDir
from mconv.graphinfo import graph_inputs, graph_outputs, op_histogram, opset, parameter_stats
from mconv.limits import BIG_MODEL_BYTES
from mconv.metrics import Comparison, Tolerance, compare_outputs, default_tolerance
from mconv.modelio import load_onnx, model_nbytes, save_onnx
from mconv.results import (
    BuildResult,
    ExportResult,
    MultiBuildResult,
    OptimizeResult,
    TargetFailure,
    Verification,
    json_safe,
)
from mconv.selection import selected_outputs
from mconv.sources import ExportOptions, export_source, load_model_any, source_of, stem_of
from mconv.targets.base import BuildOptions

VERIFY_SAMPLES = 2


@dataclass
class VerifyOptions:
    enabled: bool = True
    inputs: str | None = None  # data source for verification samples
    tolerance: Tolerance | None = None  # None: by precision
    samples: int = VERIFY_SAMPLES
    keep_failed: bool = False
    # Seconds a runner child may take; None: mconv.limits.runner_timeout of the model.
    timeout: float | None = None


def _verify_export(result, tol: Tolerance) -> Comparison:
    """onnxruntime on the exported model vs the source framework's own outputs on the same feeds."""
    from mconv.runner import reference_outputs

    outs, names = reference_outputs(result.model, [result.feeds])
    if len(names) != len(result.reference):
        raise ConversionError(
            f"the exported ONNX has {len(names)} output(s), the source model {len(result.reference)}; "
            "export verification cannot pair them"
        )
    ref = [dict(zip(names, result.reference))]
    return compare_outputs(ref, outs, tol, names)


def export_model(path: Path, out: Path | None, opts: ExportOptions, verify: VerifyOptions) -> ExportResult:
    """A framework's source (PyTorch, PaddlePaddle, TensorFlow/Keras, Caffe, ...) -> checked,
    verified ONNX file."""
    source = source_of(path)
    t0 = time.perf_counter()
    result = export_source(path, opts, source)
    model = result.model
    from mconv.modelio import check_model

    check_model(model, f"{path} (exported)")
    done = ExportResult(path, [], result.exporter, opset(model), len(model.graph.node), list(result.warnings))
    done.source_kind = source.name
    if verify.enabled:
        tol = verify.tolerance or default_tolerance("fp32")
        done.verification = Verification(source.name, tol.describe(), _verify_export(result, tol))
        if not done.verification.passed and not verify.keep_failed:
            raise VerificationError(
                f"{path}: ONNX export differs from {source.framework} beyond {tol.describe()}: "
                f"{done.verification.comparison.summary()}; nothing written",
                _without_files(done.to_json()),
            )
    dest = out or Path.cwd() / f"{source.stem(path)}.onnx"
    done.files = save_onnx(model, dest)
    done.seconds = time.perf_counter() - t0
    if done.verification is not None and not done.verification.passed:
        raise VerificationError(
            f"{path}: ONNX export differs from {source.framework}: {done.verification.comparison.summary()} "
            f"(kept {dest} as --keep-failed asked)",
            done.to_json(),
        )
    return done


def _without_files(report: dict[str, Any]) -> dict[str, Any]:
    """A report for a job that wrote nothing: no file lists, no time."""
    return {k: v for k, v in report.items() if k not in ("artifacts", "artifact", "seconds")}


def apply_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], batch: int | None = None) -> None:
    """Fix graph input dims from --input specs (and the first axis from --batch)."""
    by_name = {i.name: i for i in model.graph.input}
    real = {i.name for i in graph_inputs(model)}
    for name in shapes:
        if name not in real:
            raise UsageError(f"--input {name}: the model has no input '{name}' (inputs: {', '.join(sorted(real))})")
    for name in real:
        vi = by_name[name]
        dims = vi.type.tensor_type.shape.dim
        if name in shapes:
            shape = shapes[name]
            if len(dims) and len(dims) != len(shape):
                raise UsageError(f"--input {name}: rank {len(shape)} does not match the model's rank {len(dims)}")
            del dims[:]
            for d in shape:
                dims.add().dim_value = d
        elif batch is not None and len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    if shapes or batch is not None:
        del model.graph.value_info[:]
        for o in model.graph.output:  # stale output shapes would clash with the new inputs
            o.type.tensor_type.ClearField("shape")


def verification_samples(
    model: onnx.ModelProto,
    verify: VerifyOptions,
    calib: list | None,
    shapes: dict[str, tuple[int, ...]] | None,
    image: ImageOptions | None,
) -> list:
    infos = graph_inputs(model)
    if verify.inputs:
        return load_samples(verify.inputs, infos, limit=verify.samples, image=image, option="--inputs")
    if calib:
        return calib[: verify.samples]
    return random_feeds(infos, seed=0, count=verify.samples, shapes=shapes)


def optimize_model(path: Path, out: Path | None, passes: list[str] | None) -> OptimizeResult:
    from mconv.passes import optimize

    model = load_onnx(path)
    before = len(model.graph.node)
    t0 = time.perf_counter()
    model, reports = optimize(model, passes)
    dest = out or Path.cwd() / f"{stem_of(path)}.opt.onnx"
    files = save_onnx(model, dest, keep=False)  # the weights are not needed afterwards
    unknown = unknown_ops(model)
    warnings = (
        [
            "ops no schema describes pass through untouched: "
            + ", ".join(f"{op} ({', '.join(n[:3])})" for op, n in unknown.items())
        ]
        if unknown
        else []
    )
    return OptimizeResult(path, files, before, len(model.graph.node), reports, warnings, time.perf_counter() - t0)


@dataclass
class BuildRequest:
    path: Path
    target: str
    out_dir: Path | None = None
    precision: str = "fp32"
    calib: str | None = None
    calib_count: int = 300
    image: ImageOptions | None = None
    passes: list[str] | None = None
    export: ExportOptions = field(default_factory=ExportOptions)
    verify: VerifyOptions = field(default_factory=VerifyOptions)
    batch: int | None = None
    # The target's own options, name -> value or text (``--option KEY=VALUE``, a recipe's
    # ``options:``); validated against the target's declaration before any work starts.
    target_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Checks:
    """What verification of a build needs, prepared before the passes run."""

    samples: list | None = None
    selection: dict[str, str] = field(default_factory=dict)
    floor: Any = None  # noise.RoundingFloor
    refs: list | None = None  # taken early only for big models
    names: list[str] | None = None
    timeout: float = 0.0


@dataclass
class _Source:
    """A build's source, loaded once (for every target of a multi-target build)."""

    model: onnx.ModelProto | None  # None once the passes took it (see take_model)
    info: dict
    shapes: dict
    calib: list | None
    warnings: list[str]
    big: bool
    checks: _Checks

    def take_model(self) -> onnx.ModelProto:
        """The model for the passes to work on: the source itself, no longer held here,
        where nothing reads it afterwards (verification off, or a big model whose
        references were taken from the file before any pass ran); else a copy."""
        if self.big or self.checks.samples is None:
            model, self.model = self.model, None
            return model
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        return model


def build_model(req: BuildRequest) -> BuildResult:
    """Source -> ONNX -> passes -> target writer -> verification against onnxruntime.

    Raises:
        UsageError: options that do not fit the target, before any work.
        VerificationError: the artifact misses its tolerance (nothing written unless
            ``keep_failed``).
    """
    t0 = time.perf_counter()
    target, target_options = _check_request(req)
    src = _load_source(req)
    model, pass_reports = _run_passes(src, req, target)
    return _write_target(req, src, target, target_options, model, pass_reports, req.out_dir, t0)


def _load_source(req: BuildRequest) -> _Source:
    """The source as ONNX with the requested shapes, its calibration data and what
    verification needs (samples, reference, floor), prepared before any pass runs."""
    source, info = load_model_any(req.path, req.export)
    shapes = {s.name: s.shape for s in req.export.inputs} if info["kind"] == "onnx" else {}
    if info["kind"] == "onnx":
        apply_input_shapes(source, shapes, req.batch)
    # Calibration and verification samples depend only on the inputs, which passes keep.
    calib, warnings = None, []
    if req.calib:
        calib = load_samples(req.calib, graph_inputs(source), limit=req.calib_count, image=req.image)
        warnings += calibration_warnings(len(calib), req.calib_count)
    big = model_nbytes(source) >= BIG_MODEL_BYTES
    checks = _prepare_checks(source, req, info, shapes, calib, big)
    return _Source(source, info, shapes, calib, warnings, big, checks)


def _write_target(
    req: BuildRequest, src: _Source, target, target_options, model, pass_reports, out_dir: Path | None, t0: float
) -> BuildResult:
    """The target's artifact from the passed ``model``, verified, promoted into ``out_dir``."""
    options = BuildOptions(
        precision=req.precision,
        calib=src.calib,
        target=target_options,
        input_shapes=src.shapes,
        batch=req.batch,
        calib_count_requested=req.calib_count,
    )
    warnings = list(src.warnings) + target.preflight(model, options)
    missing_rt = target.missing_runtime_message()
    if missing_rt:
        raise ConversionError(f"target '{target.name}' cannot run here: {missing_rt}")
    stem = stem_of(req.path)
    out_dir = out_dir or Path.cwd() / f"{stem}_{target.name}"
    result = BuildResult(
        req.path, src.info["kind"], target.name, req.precision, None, pass_reports, options=target_options.to_json()
    )
    with StagingDir(out_dir) as staging:
        artifact = target.write(model, staging.path, stem, options)
        warnings += list(artifact.meta.pop("warnings", []) or [])
        if src.checks.samples is not None:
            result.verification = _verify_build(artifact, src.model, src.checks, req, target)
        if not result.passed and not req.verify.keep_failed:
            raise _refused(result, None)
        staging.promote()
    result.artifact = artifact.relocated(staging.path, out_dir)
    result.warnings = list(dict.fromkeys(warnings))  # targets may repeat the shared ones
    result.seconds = time.perf_counter() - t0
    if not result.passed:
        raise _refused(result, out_dir)
    return result


def split_target_options(targets: list, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's share of ``options`` (the keys it declares); a key no listed target
    declares is a usage error."""
    from mconv.targets import declared_options

    declared = {t.name: {s.name for s in t.Options.specs()} for t in targets}
    for key in options:
        if not any(key in names for names in declared.values()):
            owners = [name for name, _ in declared_options().get(key, [])]
            hint = f"; it is an option of {', '.join(owners)}" if owners else ""
            raise UsageError(
                f"--option {key}: none of the targets {', '.join(declared)} declares it{hint} "
                "(`mconv targets NAME` lists a target's options)"
            )
    return {name: {k: v for k, v in options.items() if k in names} for name, names in declared.items()}


def build_models(req: BuildRequest, names: list[str]) -> MultiBuildResult:
    """One source, one pass pipeline, then each target of ``names`` into ``req.out_dir/<target>``
    (default ``./<stem>_<target>``), each verified. A target that fails is recorded and the
    others still built; usage errors (any target) come before any work."""
    from dataclasses import replace

    from mconv.errors import MconvError
    from mconv.targets import get_target

    t0 = time.perf_counter()
    targets = [get_target(n) for n in names]
    seen = [t.name for t in targets]
    if not targets or len(set(seen)) != len(seen):
        raise UsageError(f"--target {','.join(names)}: give each target once, separated by commas")
    per = split_target_options(targets, req.target_options)
    subs = [replace(req, target=t.name, target_options=per[t.name]) for t in targets]
    checked = [_check_request(sub) for sub in subs]
    src = _load_source(req)
    base, base_reports = _run_passes(src, replace(req, target=seen[0]), _NoTarget())
    result = MultiBuildResult(req.path, req.precision)
    for sub, (target, target_options) in zip(subs, checked):
        t1 = time.perf_counter()
        out = req.out_dir / target.name if req.out_dir else None
        try:
            model, extra = _target_passes(base, target, req.passes)
            built = _write_target(sub, src, target, target_options, model, base_reports + extra, out, t1)
            result.outcomes.append(built)
        except MconvError as e:
            result.outcomes.append(TargetFailure(target.name, e.message, e.exit_code, e.report))
    result.seconds = time.perf_counter() - t0
    return result


class _NoTarget:
    """The default pipeline alone (a multi-target build's shared passes): no required
    passes, nothing unsupported."""

    required_passes: tuple[str, ...] = ()

    def unsupported(self, model: onnx.ModelProto) -> dict:
        return {}


def _required_passes(target, done: list[str]) -> list[str]:
    """The passes ``target`` requires that still have to run after ``done``: from the first
    one not done on, in the target's order (a cleanup it lists after it, such as
    eliminate_dead_nodes, must follow it even if it ran before)."""
    req = list(target.required_passes)
    first = next((k for k, p in enumerate(req) if p not in done), len(req))
    return req[first:]


def _target_passes(base: onnx.ModelProto, target, applied: list[str] | None) -> tuple[onnx.ModelProto, list]:
    """A copy of the shared passes' result (``applied``: None for the default pipeline) with
    the passes ``target`` requires on top."""
    from mconv.passes import DEFAULT_PIPELINE, optimize

    model = onnx.ModelProto()
    model.CopyFrom(base)
    done = list(applied) if applied is not None else list(DEFAULT_PIPELINE)
    extra = _required_passes(target, done)
    reports: list = []
    if extra:
        model, reports = optimize(model, extra)
    missing = target.unsupported(model)
    if missing:
        raise UnsupportedOpsError(target.name, missing)
    return model, reports


def _refused(result: BuildResult, kept_in: Path | None) -> VerificationError:
    """The error of a build that missed its tolerance (``kept_in``: --keep-failed's folder)."""
    comp = result.verification.comparison
    where = f"{result.source} -> {result.target}"
    if kept_in is not None:
        return VerificationError(
            f"{where}: verification failed: {comp.summary()} (files kept in {kept_in})", result.to_json()
        )
    return VerificationError(
        f"{where} ({result.precision}) differs from onnxruntime beyond {result.verification.tolerance}: "
        f"{comp.summary()}; nothing written; {comp.advice()} "
        "(--keep-failed keeps the files for `mconv verify --locate`)",
        _without_files(result.to_json()),
    )


def _check_request(req: BuildRequest):
    """The target and its validated options; usage errors before any work starts."""
    from mconv.targets import get_target

    target = get_target(req.target)
    if req.precision not in target.precisions:
        raise UsageError(f"--{req.precision}: target '{target.name}' supports {', '.join(target.precisions)}")
    if req.precision == "int8" and not req.calib:
        raise UsageError("--int8 needs calibration data: add --calib DATA (a folder or glob of .npy/.npz or images)")
    if req.calib and req.precision != "int8":
        raise UsageError("--calib is only used with --int8")
    return target, target.make_options(req.target_options, precision=req.precision)


def _prepare_checks(source, req: BuildRequest, info: dict, shapes: dict, calib, big: bool) -> _Checks:
    """Samples, selected outputs and the rounding floor; for big models the reference too."""
    from mconv.limits import runner_timeout

    checks = _Checks(timeout=runner_timeout(source, req.verify.timeout))
    if not req.verify.enabled:
        return checks
    checks.samples = verification_samples(source, req.verify, calib, shapes, req.image)
    checks.selection = selected_outputs(source)
    checks.floor = _floor(source, checks.samples, req, info, shapes, big, checks.timeout)
    if big:
        # Never hold the weights twice: take the reference now, in a child process reading
        # the file, then let the passes work on the loaded model in place.
        checks.refs, checks.names = _reference_from_file(source, checks.samples, req, info, shapes, checks.timeout)
    return checks


def _run_passes(src: _Source, req: BuildRequest, target):
    """The passes asked for (default pipeline) plus what the target requires, on a copy
    of the source, or on the source itself where nothing reads it afterwards (see
    :meth:`_Source.take_model`); unsupported ops left afterwards are an error."""
    from mconv.passes import DEFAULT_PIPELINE, optimize

    passes = list(req.passes) if req.passes is not None else list(DEFAULT_PIPELINE)
    passes += _required_passes(target, passes)
    # No name here holds the passes' input: each pass's input is freed once it returns a new model.
    model, pass_reports = optimize(src.take_model(), passes)
    missing = target.unsupported(model)
    if missing:
        raise UnsupportedOpsError(target.name, missing)
    return model, pass_reports


def _verify_build(artifact, source: onnx.ModelProto, checks: _Checks, req: BuildRequest, target) -> Verification:
    """The staged artifact against onnxruntime on the source, each in a child process."""
    from mconv.runner import reference_outputs_isolated
    from mconv.verification import check_artifact

    if checks.refs is None:
        # In a child like every runner: a slow or crashing native call there
        # cannot keep this process from timing out or answering SIGTERM.
        checks.refs, checks.names = reference_outputs_isolated(source, checks.samples, timeout=checks.timeout)
    tol = req.verify.tolerance or target.default_tolerance(req.precision)
    comp = check_artifact(
        artifact,
        checks.samples,
        checks.refs,
        checks.names,
        tol,
        timeout=checks.timeout,
        isolate=True,
        selection=checks.selection,
        floor=checks.floor,
    )
    floor = checks.floor
    # The floor is measured only when an FP32 output misses the fixed bound.
    probe = None if floor is None else floor.error or ("measured" if floor.measured else "not needed")
    return Verification("onnxruntime", tol.describe(), comp, samples=len(checks.samples), floor_probe=probe)


def _floor(
    source: onnx.ModelProto, samples: list, req: BuildRequest, info: dict, shapes: dict, big: bool, timeout: float
):
    """The source's rounding floor on ``samples``, measured only if an FP32 output needs it,
    in a child process like every runner (a ModelProto is sent serialized).

    Big models are probed from the source file, so only an unchanged ONNX source (no
    --input shapes, no --batch) gets one; the others keep the fixed bound.
    """
    from mconv.noise import RoundingFloor, probe_outputs_isolated

    if not big:
        return RoundingFloor(lambda: probe_outputs_isolated(source, samples, timeout=timeout))
    if info["kind"] == "onnx" and not shapes and req.batch is None:
        path = str(req.path)
        return RoundingFloor(lambda: probe_outputs_isolated(path, samples, timeout=timeout))
    return None


def _reference_from_file(
    source: onnx.ModelProto, samples: list, req: BuildRequest, info: dict, shapes: dict, timeout: float
) -> tuple:
    """Reference outputs for a big model, computed by a child process from a file."""
    import tempfile

    from mconv.runner import reference_outputs_isolated

    if info["kind"] == "onnx" and not shapes and req.batch is None:
        return reference_outputs_isolated(str(req.path), samples, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="mconv-ref-") as d:
        path = f"{d}/source.onnx"
        save_onnx(source, path, external=True)
        return reference_outputs_isolated(path, samples, timeout=timeout)


def _artifact_of(path: Path):
    """The artifact ``path`` is when it is one a target wrote (not an ONNX file: that is
    a model here), else None."""
    from mconv.verification import find_artifact

    if not path.is_file() or path.suffix.lower() == ".onnx":
        return None
    found = find_artifact(path)
    return found if found is not None and found.target != "onnx" else None


def inspect_artifact(artifact, target: str | None) -> dict[str, Any]:
    """What an artifact takes and holds: its target, precision, files, inputs and outputs
    (as recorded beside it or read from its own files) and the target's own summary."""
    from mconv.targets import get_target

    if target and get_target(target).name != artifact.target:
        raise UsageError(
            f"{artifact.main} is an artifact of target '{artifact.target}'; --target {target} applies to models only"
        )
    t = get_target(artifact.target)
    inputs = t.artifact_inputs(artifact)
    outputs = [
        {"name": o["name"], "shape": o.get("shape"), "dtype": o.get("dtype") or "float32"}
        for o in (artifact.meta.get("outputs") or [])
        if isinstance(o, dict) and "name" in o
    ]
    return {
        "command": "inspect",
        "artifact": str(artifact.main),
        "target": artifact.target,
        "precision": artifact.precision,
        "files": [{"path": str(f), "bytes": f.stat().st_size} for f in artifact.files if f.is_file()],
        "inputs": None if inputs is None else [i.to_json() for i in inputs],
        "outputs": outputs or None,
        **t.artifact_summary(artifact),
    }


def inspect_model(path: Path, target: str | None, opts: ExportOptions) -> dict[str, Any]:
    from mconv.targets import all_targets, get_target

    artifact = _artifact_of(path)
    if artifact is not None:
        return inspect_artifact(artifact, target)
    model, info = load_model_any(path, opts)
    count, nbytes = parameter_stats(model)
    report: dict[str, Any] = {
        "command": "inspect",
        "source": str(path),
        "source_kind": info["kind"],
        "opset": opset(model),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [i.to_json() for i in graph_inputs(model)],
        "outputs": [o.to_json() for o in graph_outputs(model)],
        "nodes": len(model.graph.node),
        "ops": op_histogram(model),
        "parameters": count,
        "parameter_bytes": nbytes,
        "targets": {},
    }
    names = [target] if target else [e.name for e in all_targets()]
    folded = None
    for name in names:
        try:
            t = get_target(name)
        except (UsageError, ConversionError) as e:
            if target:
                raise
            report["targets"][name] = {"error": str(e)}
            continue
        if folded is None:
            from mconv.passes import optimize

            m2 = onnx.ModelProto()
            m2.CopyFrom(model)
            try:
                folded, _ = optimize(m2)
            except ConversionError:
                folded = model
        entry: dict[str, Any] = {"runtime": t.runtime_missing() or "available", "unsupported": t.unsupported(folded)}
        from mconv.targets.base import BuildOptions

        entry["findings"] = [f.to_json() for f in t.findings(folded, BuildOptions())]
        report["targets"][t.name] = entry
    return json_safe(report)


def unknown_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op type -> node names for ops neither onnx's schemas nor the model's functions define."""
    from mconv.graphinfo import nodes_by_op

    local = {(f.domain, f.name) for f in model.functions}
    out = {}
    for key, names in nodes_by_op(model).items():
        domain, _, op = key.rpartition("::")
        if (domain, op) in local:
            continue
        if not onnx.defs.has(op, domain or ""):
            out[key] = names
    return out
