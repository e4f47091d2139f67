"""One recipe's steps, run in order into ``<out>/<name>``: checkpoint, export, passes,
data, then per target build, verify and bench; the recipe's report.json and report.md."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mconv.errors import EXIT_CONVERSION, EXIT_OK, ConversionError, MconvError, VerificationError
from mconv.recipe import DataSpec, LoadedRecipe, TargetSpec, ToleranceSpec
from mconv.runs.data import SYNTHETIC_COUNT, save_samples, synthetic_samples
from mconv.runs.plan import calib_spec, synthetic_specs
from mconv.runs.report import exit_code_of, json_safe, versions, write_report

if TYPE_CHECKING:
    from mconv.targets.base import Artifact

CALIB_COUNT = 300  # calibration samples read from a data path when the recipe gives no count


def _rel(path: str | Path, root: Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _load_callable(spec: str) -> Callable[..., Any]:
    """'/abs/file.py:name' (already checked to be inside the recipe folder) or 'module:name'."""
    from mconv.convert.torch import load_factory

    fn = load_factory(spec)
    if not callable(fn):
        raise ConversionError(f"'{spec}': '{spec.rpartition(':')[2]}' is not callable")
    return fn


def _tolerance(*specs: ToleranceSpec | None):
    from mconv.metrics import Tolerance

    for s in specs:
        if s is not None and (s.rtol is not None or s.min_cos is not None):
            return Tolerance(rtol=s.rtol, atol=s.atol or 0.0, min_cos=s.min_cos)
    return None


class RecipeRun:
    """Runs one recipe's steps into ``out_root/<name>`` and writes its reports."""

    def __init__(self, recipe: LoadedRecipe, out_root: Path, emit: Callable[[str, dict[str, Any]], None]) -> None:
        self.recipe = recipe
        self.spec = recipe.spec
        self.root = out_root.resolve()
        self.dir = self.root / recipe.name
        self.emit = emit
        self.steps: list[dict[str, Any]] = []
        self.shapes = {i.name: tuple(i.shape) for i in self.spec.inputs}
        self.data: dict[int, str] = {}  # id(DataSpec) -> generated folder
        self._refs: dict[tuple, tuple[list, list[str]]] = {}
        self._floors: dict[tuple, tuple[dict, Any]] = {}  # (selected outputs, RoundingFloor) per reference

    # -- step bookkeeping
    @contextlib.contextmanager
    def step(self, name: str, **meta: Any) -> Iterator[dict[str, Any]]:
        rec: dict[str, Any] = {"step": name, **meta, "status": "running"}
        self.emit("start", dict(rec))
        t0 = time.perf_counter()
        try:
            yield rec
            if rec["status"] == "running":
                rec["status"] = "ok"
        except MconvError as e:
            rec.update(status="failed", error=e.message, exit_code=e.exit_code)
        except Exception as e:
            traceback.print_exc()  # into run.log
            rec.update(status="failed", error=f"internal error: {type(e).__name__}: {e}", exit_code=EXIT_CONVERSION)
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            self.steps.append(rec)
            self.emit("end", dict(rec))

    def _artifacts(self, paths: list[str]) -> list[dict[str, Any]]:
        return [{"path": _rel(p, self.dir), "bytes": Path(p).stat().st_size} for p in paths if Path(p).is_file()]

    # -- the run
    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        onnx_path = self._export()
        opt_path = self._passes(onnx_path) if onnx_path else None
        if opt_path is not None and self._data(opt_path):
            for t in self.recipe.targets():
                self._target(t, onnx_path, opt_path)
        return self._finish(time.perf_counter() - t0)

    def _export(self) -> Path | None:
        from mconv.modelio import load_onnx, save_onnx
        from mconv.pipeline import ExportOptions, VerifyOptions, apply_input_shapes, export_model
        from mconv.sources import source_kind
        from mconv.specs import DynamicAxis, InputSpec

        src = self.spec.source
        path = Path(src.path or src.resource or src.checkpoint or self.dir / "source" / f"{self.recipe.name}.pt")
        if src.factory and not src.checkpoint:
            with self.step("checkpoint") as rec:
                self._make_checkpoint(path)
                rec["artifacts"] = self._artifacts([str(path)])
            if rec["status"] != "ok":
                return None
        dest = self.dir / "export" / f"{self.recipe.name}.onnx"
        with self.step("export", source=str(path)) as rec:
            if source_kind(path) == "onnx":
                model = load_onnx(path)
                apply_input_shapes(model, self.shapes)
                files = save_onnx(model, dest)
                rec["kind"] = "onnx"
            else:
                opts = ExportOptions(
                    model_spec=src.factory,
                    inputs=[InputSpec(i.name, tuple(i.shape), i.dtype) for i in self.spec.inputs],
                    dynamic=[DynamicAxis(i.name, a, lbl) for i in self.spec.inputs for a, lbl in i.dynamic.items()],
                    opset=self.spec.export.opset,
                    exporter=self.spec.export.exporter,
                    trust_pickle=src.trust_pickle,
                    weights=Path(src.weights) if src.weights else None,
                    layout=self.spec.export.layout,
                )
                verify = VerifyOptions(enabled=self.spec.verify.enabled, tolerance=self._fp32_tolerance())
                result = export_model(path, dest, opts, verify)
                files = result.files
                rec.update(kind=result.source_kind, exporter=result.exporter, opset=result.opset, nodes=result.nodes)
                if result.verification is not None:
                    rec["verification"] = result.to_json()["verification"]
            rec["artifacts"] = self._artifacts([str(f) for f in files])
        return dest if rec["status"] == "ok" else None

    def _make_checkpoint(self, path: Path) -> None:
        from mconv.fsutil import atomic_path

        src = self.spec.source
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            if src.make_checkpoint:
                _load_callable(src.make_checkpoint)(str(tmp))
            else:
                import torch

                module = _load_callable(src.factory)()
                if not isinstance(module, torch.nn.Module):
                    raise ConversionError(f"source.factory '{src.factory}' returned {type(module).__name__}")
                torch.save(module.state_dict(), str(tmp))
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise ConversionError(f"source.make_checkpoint '{src.make_checkpoint}' wrote nothing to {tmp}")

    def _fp32_tolerance(self):
        v = self.spec.verify
        return _tolerance(v.tolerances.get("fp32"), ToleranceSpec(rtol=v.rtol, atol=v.atol, min_cos=v.min_cos))

    def _passes(self, onnx_path: Path) -> Path | None:
        from mconv.metrics import compare_outputs, default_tolerance
        from mconv.modelio import load_onnx, save_onnx
        from mconv.passes import get_pass, optimize
        from mconv.runner import reference_outputs

        dest = self.dir / "passes" / f"{self.recipe.name}.onnx"
        with self.step("passes") as rec:
            model = load_onnx(onnx_path)
            before = len(model.graph.node)
            chosen = self.spec.passes
            passes = None if chosen is None else [type(get_pass(p.name))(**p.options) for p in chosen]
            model, reports = optimize(model, passes)
            files = save_onnx(model, dest)
            rec.update(nodes_before=before, nodes_after=len(model.graph.node), passes=[r.to_json() for r in reports])
            rec["artifacts"] = self._artifacts([str(f) for f in files])
            if self.spec.verify.enabled:
                samples, label = self._verify_samples(None)
                refs, names = self._reference(onnx_path, samples, label, None)
                gots, _ = reference_outputs(model, samples)
                tol = self._fp32_tolerance() or default_tolerance("fp32")
                comp = compare_outputs(refs, gots, tol, names)
                rec["verification"] = _verification_record(samples, label, tol, comp)
                if not comp.passed:
                    raise VerificationError(f"the passes changed the model's outputs: {comp.summary()}")
        return dest if rec["status"] == "ok" else None

    def _data(self, opt_path: Path) -> bool:
        from mconv.graphinfo import graph_inputs
        from mconv.modelio import load_onnx

        specs = synthetic_specs(self.recipe)
        if not specs:
            return True
        with self.step("data") as rec:
            infos = graph_inputs(load_onnx(opt_path))
            written = []
            for i, s in enumerate(specs):
                folder = self.dir / "data" / (f"synthetic_{i}" if len(specs) > 1 else "synthetic")
                count = s.count or SYNTHETIC_COUNT
                samples = synthetic_samples(s.synthetic.kind, infos, self.shapes, count, s.synthetic.seed)
                written += save_samples(samples, folder)
                self.data[id(s)] = str(folder)
            rec["artifacts"] = [{"path": _rel(written[0].parent, self.dir), "files": len(written)}] if written else []
        return rec["status"] == "ok"

    def _data_source(self, s: DataSpec) -> str:
        return self.data[id(s)] if s.synthetic is not None else str(s.path)

    def _image(self, s: DataSpec | None):
        from mconv.data import ImageOptions

        if s is None or s.image is None:
            return None
        return ImageOptions(tuple(s.image.mean), tuple(s.image.std), tuple(s.image.size) if s.image.size else None)

    def _verify_samples(self, calib: DataSpec | None, batch: int | None = None) -> tuple[list, str]:
        """Verification inputs: verify.inputs, else the calibration data (int8), else random (seed 0)."""
        from mconv.data import load_samples, random_feeds
        from mconv.graphinfo import graph_inputs
        from mconv.modelio import load_onnx

        v = self.spec.verify
        infos = graph_inputs(load_onnx(self.dir / "passes" / f"{self.recipe.name}.onnx"))
        shapes = dict(self.shapes)
        if batch is not None:
            from mconv.data import concrete_shape

            shapes = {i.name: (batch, *concrete_shape(i, self.shapes)[1:]) for i in infos}
        src = v.inputs or calib
        if src is not None:
            path = self._data_source(src)
            return load_samples(path, infos, limit=v.samples, image=self._image(src), option="--inputs"), _rel(
                path, self.dir
            )
        return random_feeds(infos, seed=0, count=v.samples, shapes=shapes), "random (seed 0)"

    def _reference(self, onnx_path: Path, samples: list, label: str, batch: int | None):
        from mconv.modelio import load_onnx
        from mconv.noise import RoundingFloor
        from mconv.pipeline import apply_input_shapes
        from mconv.runner import reference_outputs
        from mconv.selection import selected_outputs

        key = (label, batch)
        if key not in self._refs:
            model = load_onnx(onnx_path)
            if batch is not None:
                apply_input_shapes(model, {}, batch)
            self._refs[key] = reference_outputs(model, samples)
            self._floors[key] = (selected_outputs(model), RoundingFloor(lambda: _probe(onnx_path, samples, batch)))
        return self._refs[key]

    def _target(self, t: TargetSpec, onnx_path: Path, opt_path: Path) -> None:
        from mconv.pipeline import BuildRequest, ExportOptions, VerifyOptions, build_model
        from mconv.targets import get_target

        label = t.label
        meta = {"target": t.target, "precision": t.precision, "label": label}
        calib = calib_spec(self.recipe, t)
        artifact = None
        target = None
        with self.step(f"build {label}", **meta) as rec:
            target = get_target(t.target)
            missing = target.runtime_missing()
            if missing:
                if t.required:
                    raise ConversionError(f"required: true, but target '{t.target}' cannot run here: {missing}")
                rec.update(status="skipped", reason=missing)
            else:
                req = BuildRequest(
                    path=opt_path,
                    target=t.target,
                    out_dir=self.dir / label,
                    precision=t.precision,
                    calib=self._data_source(calib) if calib else None,
                    calib_count=(calib.count or (SYNTHETIC_COUNT if calib.synthetic else CALIB_COUNT)) if calib else 1,
                    image=self._image(calib),
                    passes=[],  # the recipe's passes already ran; the target adds what it requires
                    export=ExportOptions(),
                    verify=VerifyOptions(enabled=False),
                    batch=t.batch,
                    target_options=dict(t.options),
                )
                result = build_model(req)
                artifact = result.artifact
                rec.update(
                    artifacts=self._artifacts([str(f) for f in result.files]),
                    warnings=list(result.warnings),
                    passes=[p.name for p in result.passes],
                )
        if artifact is None:
            return
        verified = True
        if self.spec.verify.enabled:
            verified = self._verify(t, target, artifact, onnx_path, calib, meta)
        if self.spec.bench.enabled and verified:
            self._bench(t, artifact, meta)

    def _verify(self, t: TargetSpec, target, artifact: Artifact, onnx_path: Path, calib, meta: dict) -> bool:
        from mconv.verification import check_artifact

        v = self.spec.verify
        with self.step(f"verify {t.label}", **meta) as rec:
            samples, label = self._verify_samples(calib, t.batch)
            refs, names = self._reference(onnx_path, samples, label, t.batch)
            tol = _tolerance(
                t.verify, v.tolerances.get(t.precision), ToleranceSpec(rtol=v.rtol, atol=v.atol, min_cos=v.min_cos)
            ) or target.default_tolerance(t.precision)
            selection, floor = self._floors[(label, t.batch)]
            comp = check_artifact(
                artifact,
                samples,
                refs,
                names,
                tol,
                timeout=v.timeout,
                selection=selection,
                floor=floor,
            )
            rec["verification"] = _verification_record(samples, label, tol, comp)
            if not comp.passed:
                raise VerificationError(f"{t.label} differs from onnxruntime beyond {tol.describe()}: {comp.summary()}")
        return rec["status"] == "ok"

    def _bench(self, t: TargetSpec, artifact: Artifact, meta: dict) -> None:
        from mconv.benchmark import BenchRequest, bench

        b = self.spec.bench
        with self.step(f"bench {t.label}", **meta) as rec:
            report = bench(
                BenchRequest(
                    artifacts=[artifact.main],
                    threads=b.threads,
                    warmup=b.warmup,
                    iters=b.iterations,
                    batch=t.batch,
                    timeout=self.spec.verify.timeout,
                )
            )
            row = report["results"][0]
            rec["bench"] = {k: row.get(k) for k in ("latency_ms", "throughput", "load_ms", "peak_rss_mb", "iterations")}
            rec["bench"].update(threads=b.threads, warmup=b.warmup)
            if row["status"] != "ok":
                raise MconvError(f"bench {t.label}: {row['error']}", exit_code=row.get("exit_code") or 1)

    def _finish(self, seconds: float) -> dict[str, Any]:
        code = exit_code_of(s.get("exit_code", EXIT_OK) for s in self.steps if s["status"] == "failed")
        report = {
            "recipe": self.recipe.file,
            "name": self.recipe.name,
            "description": self.spec.description,
            "status": "passed" if code == EXIT_OK else "failed",
            "exit_code": code,
            "seconds": round(seconds, 3),
            "overrides": self.recipe.overrides,
            "steps": self.steps,
            "versions": versions(),
        }
        report = json_safe(report)
        write_report(report, self.dir)
        return report


def _verification_record(samples: list, label: str, tol: Any, comp: Any) -> dict[str, Any]:
    """The report entry for one comparison against onnxruntime on the exported model."""
    return {
        "reference": "onnxruntime on the export",
        "samples": len(samples),
        "inputs": label,
        "tolerance": tol.describe(),
        **comp.to_json(),
    }


def _probe(onnx_path: Path, samples: list, batch: int | None) -> list:
    """The rounding-floor probe of the model at ``onnx_path`` (re-read: nothing held meanwhile)."""
    from mconv.modelio import load_onnx
    from mconv.noise import probe_outputs
    from mconv.pipeline import apply_input_shapes

    model = load_onnx(onnx_path)
    if batch is not None:
        apply_input_shapes(model, {}, batch)
    return probe_outputs(model, samples)
