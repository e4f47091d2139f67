"""``mconv run``: execute validated recipes, each in its own process, and report.

Every recipe runs its steps in order: ``checkpoint`` (when the source is a factory
without a committed checkpoint), ``export`` (PyTorch -> ONNX, verified against
PyTorch; an ONNX source is copied with the recipe's input shapes), ``passes``
(verified against the export with onnxruntime), ``data`` (synthetic samples, when
the recipe asks for them), then per target ``build``, ``verify`` (against the
exported ONNX with onnxruntime) and ``bench`` (when enabled). A failed target does
not stop the others; a failed export or passes step ends that recipe.

Recipes run in spawned child processes, ``jobs`` at a time, so a runtime that
crashes natively fails its recipe only. Each child sends step events to the parent
over a queue; the parent shows rich progress bars on a terminal, or one plain line
per step otherwise (and with ``--json``, on stderr). What the libraries print goes
to ``<recipe>/run.log``. Each recipe folder gets ``report.json`` and ``report.md``;
the output folder gets ``summary.json`` and ``summary.md``.

Exit codes: 0 when every step of every recipe passed or was skipped, 3 when the only
failures are verification failures, 1 otherwise.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import shutil
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mconv.errors import EXIT_CONVERSION, EXIT_OK, EXIT_VERIFY, ConversionError, MconvError, VerificationError
from mconv.recipes import DataSpec, LoadedRecipe, TargetSpec, ToleranceSpec

if TYPE_CHECKING:
    from mconv.targets.base import Artifact

SYNTHETIC_COUNT = 16  # synthetic calibration samples when the recipe gives no count
CALIB_COUNT = 300  # calibration samples read from a data path when the recipe gives no count
# Distributions every report records the version of; targets add their runtimes' (Target.runtime_packages).
CORE_PACKAGES = ("onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy", "torch")

Event = tuple[str, str, dict[str, Any]]  # (kind, recipe name, payload)


# ---- planning ----------------------------------------------------------------------------------
def plan(recipe: LoadedRecipe) -> list[str]:
    """The step names a recipe will run if nothing fails (for progress bars)."""
    spec = recipe.spec
    steps = []
    if spec.source.factory and not spec.source.checkpoint:
        steps.append("checkpoint")
    steps += ["export", "passes"]
    if _synthetic_specs(recipe):
        steps.append("data")
    for t in spec.targets:
        steps.append(f"build {t.label}")
        if spec.verify.enabled:
            steps.append(f"verify {t.label}")
        if spec.bench.enabled:
            steps.append(f"bench {t.label}")
    return steps


def _calib_spec(recipe: LoadedRecipe, t: TargetSpec) -> DataSpec | None:
    if t.precision != "int8":
        return None
    return t.calib or recipe.spec.calib


def _synthetic_specs(recipe: LoadedRecipe) -> list[DataSpec]:
    specs = [_calib_spec(recipe, t) for t in recipe.spec.targets]
    if recipe.spec.verify.inputs is not None:
        specs.append(recipe.spec.verify.inputs)
    out: list[DataSpec] = []
    for s in specs:
        if s is not None and s.synthetic is not None and s not in out:
            out.append(s)
    return out


# ---- one recipe (runs in a child process) ------------------------------------------------------
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


def synthetic_samples(kind: str, infos, shapes, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded samples: smooth pseudo-images (gradients and blobs) for NCHW float inputs, else normals."""
    from mconv.data import concrete_shape, random_feeds

    if kind == "normal":
        return random_feeds(infos, seed=seed, count=count, shapes=shapes)
    rng = np.random.default_rng(seed)
    out = []
    for feeds in random_feeds(infos, seed=seed, count=count, shapes=shapes):
        for info in infos:
            shape = concrete_shape(info, shapes)
            if len(shape) != 4 or feeds[info.name].dtype.kind != "f":
                continue
            n, c, h, w = shape
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            img = np.empty(shape, np.float32)
            for b in range(n):
                for ch in range(c):
                    a, bb, cc = rng.uniform(-1, 1, 3)
                    cx, cy = rng.uniform(0, 1, 2)
                    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * rng.uniform(5, 30))
                    img[b, ch] = a * xx + bb * yy + cc * blob
            feeds[info.name] = img.astype(feeds[info.name].dtype)
        out.append(feeds)
    return out


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
            for t in self.spec.targets:
                self._target(t, onnx_path, opt_path)
        return self._finish(time.perf_counter() - t0)

    def _export(self) -> Path | None:
        from mconv.modelio import load_onnx, save_onnx
        from mconv.pipeline import ExportOptions, VerifyOptions, apply_input_shapes, export_model, source_kind
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
                )
                verify = VerifyOptions(enabled=self.spec.verify.enabled, tolerance=self._fp32_tolerance())
                result = export_model(path, dest, opts, verify)
                files = result.files
                rec.update(kind="torch", exporter=result.exporter, opset=result.opset, nodes=result.nodes)
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

        specs = _synthetic_specs(self.recipe)
        if not specs:
            return True
        with self.step("data") as rec:
            infos = graph_inputs(load_onnx(opt_path))
            written = []
            for i, s in enumerate(specs):
                folder = self.dir / "data" / (f"synthetic_{i}" if len(specs) > 1 else "synthetic")
                count = s.count or SYNTHETIC_COUNT
                samples = synthetic_samples(s.synthetic.kind, infos, self.shapes, count, s.synthetic.seed)
                written += _save_samples(samples, folder)
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
        calib = _calib_spec(self.recipe, t)
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
        from mconv.fsutil import write_text_atomic

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
        report = _json_safe(report)
        import json

        write_text_atomic(self.dir / "report.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(self.dir / "report.md", render_report_md(report))
        return report


def _save_samples(samples: list[dict[str, np.ndarray]], folder: Path) -> list[Path]:
    from mconv.fsutil import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, feeds in enumerate(samples):
        single = len(feeds) == 1
        dest = folder / (f"sample_{i:04d}.npy" if single else f"sample_{i:04d}.npz")
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            if single:
                np.save(f, next(iter(feeds.values())))
            else:
                np.savez(f, **feeds)
        written.append(dest)
    return written


def _json_safe(o: Any) -> Any:
    import math

    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def exit_code_of(codes) -> int:
    """0 without failures, 3 when every failure is a verification failure, else 1."""
    codes = [c for c in codes]
    if not codes:
        return EXIT_OK
    return EXIT_VERIFY if all(c == EXIT_VERIFY for c in codes) else EXIT_CONVERSION


def versioned_packages() -> list[str]:
    """The core packages, then each registered target's runtime packages, in registry order, once each."""
    from mconv.targets import all_targets

    names = list(CORE_PACKAGES)
    for entry in all_targets():
        if entry.error:
            continue
        try:
            packages = entry.load().runtime_packages
        except Exception:  # a broken plugin is listed by `mconv targets`, not here
            continue
        for name in packages:
            if name not in names:
                names.append(name)
    return names


def versions() -> dict[str, str | None]:
    """mconv, Python and each backend library's installed version (None when absent)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import mconv

    out: dict[str, str | None] = {"mconv": mconv.__version__, "python": platform.python_version()}
    for name in versioned_packages():
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ---- Markdown reports ---------------------------------------------------------------------------
def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: Any, spec: str) -> str:
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return "" if v is None else str(v)


def render_report_md(r: dict[str, Any]) -> str:
    out = [f"# {r['name']}: {r['status'].upper()} (exit {r['exit_code']})\n"]
    out.append(f"Recipe `{r['recipe']}`, {r['seconds']:.1f} s.")
    if r.get("overrides"):
        out.append(" Overrides: " + ", ".join(f"`--set {o}`" for o in r["overrides"]) + ".")
    out.append("\n\n## Steps\n\n")
    out.append(
        _md_table(
            ["step", "status", "seconds", "details"],
            [
                [s["step"], s["status"], f"{s['seconds']:.2f}", s.get("error") or s.get("reason") or ""]
                for s in r["steps"]
            ],
        )
    )
    vrows = []
    for s in r["steps"]:
        v = s.get("verification")
        for o in (v or {}).get("outputs", []):
            vrows.append(
                [
                    s["step"],
                    o["name"],
                    v.get("tolerance"),
                    _fmt(o["max_abs"], ".3g"),
                    _fmt(o["rel"], ".3g"),
                    _fmt(o["cosine"], ".6f"),
                    "" if o.get("top1") is None else _fmt(o["top1"], ".2f"),
                    "yes" if o["passed"] else f"NO: {o.get('reason', '')}",
                ]
            )
    if vrows:
        out.append("\n## Verification\n\n")
        out.append(_md_table(["step", "output", "tolerance", "max abs", "rel", "cosine", "top-1", "ok"], vrows))
    arows = [[s["step"], a["path"], a.get("bytes", a.get("files"))] for s in r["steps"] for a in s.get("artifacts", [])]
    if arows:
        out.append("\n## Artifacts\n\n")
        out.append(_md_table(["step", "path", "bytes (files)"], arows))
    brows = []
    for s in r["steps"]:
        b = s.get("bench")
        if b and b.get("latency_ms"):
            lat = b["latency_ms"]
            brows.append(
                [
                    s["step"],
                    _fmt(lat.get("median"), ".3f"),
                    _fmt(lat.get("p90"), ".3f"),
                    _fmt(b.get("throughput"), ".1f"),
                    _fmt(b.get("load_ms"), ".1f"),
                    _fmt(b.get("peak_rss_mb"), ".0f"),
                    b.get("iterations"),
                ]
            )
    if brows:
        out.append("\n## Bench\n\n")
        out.append(_md_table(["step", "median ms", "p90 ms", "per s", "load ms", "peak RSS MB", "iters"], brows))
    out.append("\n## Versions\n\n")
    out.append(_md_table(["library", "version"], [[k, v or "not installed"] for k, v in r["versions"].items()]))
    return "".join(out)


def render_summary_md(s: dict[str, Any]) -> str:
    out = [f"# mconv run: {'PASSED' if s['ok'] else 'FAILED'} (exit {s['exit_code']})\n\n"]
    out.append(f"{len(s['recipes'])} recipe(s) in {s['seconds']:.1f} s.\n\n")
    rows = [
        [
            r["name"],
            r["recipe"],
            r["status"],
            r["exit_code"],
            _fmt(r["seconds"], ".1f"),
            "; ".join(r["failures"] + [f"skipped {x}" for x in r["skipped"]]),
            f"[report]({r['report_md']})" if r.get("report_md") else "",
        ]
        for r in s["recipes"]
    ]
    out.append(_md_table(["recipe", "file", "status", "exit", "seconds", "notes", "report"], rows))
    return "".join(out)


# ---- the child process -------------------------------------------------------------------------
def _worker(recipe: LoadedRecipe, out_root: str, q, threads: int | None) -> None:
    """Body of one recipe's process: logs to run.log, events and the result to ``q``."""
    from mconv.fsutil import commit, install_signal_cleanup, temp_path_for

    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    install_signal_cleanup()
    rdir = Path(out_root).resolve() / recipe.name
    if rdir.exists() and (rdir / "report.json").is_file():
        shutil.rmtree(rdir)  # a previous run's folder: its files must not pass for this run's
    rdir.mkdir(parents=True, exist_ok=True)
    log = temp_path_for(rdir / "run.log")
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)

    def emit(kind: str, payload: dict[str, Any]) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {kind} {payload.get('step')} {payload.get('status')}", flush=True)
        q.put((kind, recipe.name, payload))

    try:
        report = RecipeRun(recipe, Path(out_root), emit).run()
    except BaseException as e:  # the run itself broke (not a step): still report it
        traceback.print_exc()
        report = _failed_report(recipe, f"internal error: {type(e).__name__}: {e}")
    sys.stdout.flush()
    sys.stderr.flush()
    commit(log, rdir / "run.log")
    q.put(("done", recipe.name, report))


# ---- display ----------------------------------------------------------------------------------------
def _describe(rec: dict[str, Any]) -> str:
    text = f"{rec['status']} ({rec['seconds']:.1f} s)"
    if rec.get("error"):
        text += f": {rec['error']}"
    elif rec.get("reason"):
        text += f": {rec['reason']}"
    return text


class PlainDisplay:
    """One line per finished step; for CI logs and --json."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        self.stream.write(f"[{time.perf_counter() - self.t0:7.1f}s] {text}\n")
        self.stream.flush()

    def started(self, name: str, file: str, steps: list[str]) -> None:
        self._line(f"{name}: started ({file}, {len(steps)} steps)")

    def event(self, kind: str, name: str, rec: dict[str, Any]) -> None:
        if kind == "end":
            self._line(f"{name}: {rec['step']} {_describe(rec)}")

    def finished(self, name: str, report: dict[str, Any]) -> None:
        self._line(f"{name}: {report['status'].upper()} (exit {report['exit_code']}) in {report['seconds']:.1f} s")

    def close(self) -> None:
        pass


class RichDisplay:
    """A progress bar per recipe with the running step beside a spinner."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(highlight=False)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[recipe]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def started(self, name: str, file: str, steps: list[str]) -> None:
        self.tasks[name] = self.progress.add_task("starting", total=len(steps), recipe=name)

    def event(self, kind: str, name: str, rec: dict[str, Any]) -> None:
        task = self.tasks[name]
        if kind == "start":
            self.progress.update(task, description=rec["step"])
            return
        self.progress.advance(task)
        color = {"ok": "green", "skipped": "yellow"}.get(rec["status"], "red")
        self.progress.console.print(f"{name}: {rec['step']} [{color}]{_describe(rec)}[/{color}]", markup=True)

    def finished(self, name: str, report: dict[str, Any]) -> None:
        task = self.tasks[name]
        total = self.progress.tasks[task].total if task in self.progress.task_ids else None
        ok = report["status"] == "passed"
        self.progress.update(
            task,
            completed=total,
            description="[green]passed[/green]" if ok else f"[red]failed (exit {report['exit_code']})[/red]",
        )

    def close(self) -> None:
        self.progress.stop()


# ---- the batch -------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    out_dir: Path
    jobs: int = 1
    as_json: bool = False
    progress: bool | None = None  # None: rich bars when stdout is a terminal and not --json


def _summary_row(recipe: LoadedRecipe, report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    steps = report.get("steps", [])
    failures = [f"{s['step']}: {s.get('error', '')}" for s in steps if s["status"] == "failed"]
    if report.get("error"):
        failures.append(report["error"])
    rdir = out_dir / recipe.name
    return {
        "name": recipe.name,
        "recipe": recipe.file,
        "status": report["status"],
        "exit_code": report["exit_code"],
        "seconds": report.get("seconds", 0.0),
        "steps": {k: sum(1 for s in steps if s["status"] == k) for k in ("ok", "failed", "skipped")},
        "failures": failures,
        "skipped": [f"{s['step']}: {s.get('reason', '')}" for s in steps if s["status"] == "skipped"],
        "report": str(rdir / "report.json") if (rdir / "report.json").is_file() else None,
        "report_md": f"{recipe.name}/report.md" if (rdir / "report.md").is_file() else None,
    }


def run_batch(recipes: list[LoadedRecipe], opts: RunOptions) -> dict[str, Any]:
    """Run every recipe (``opts.jobs`` processes at a time); write and return the summary."""
    out_dir = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    display = _display_for(opts)
    t0 = time.perf_counter()
    reports = _run_recipes(recipes, out_dir, max(1, opts.jobs), display)
    return _write_summary(recipes, reports, out_dir, t0)


def _display_for(opts: RunOptions) -> RichDisplay | PlainDisplay:
    """Rich bars when asked (by default on a terminal without --json), else plain lines (stderr with --json)."""
    rich_ok = opts.progress if opts.progress is not None else (sys.stdout.isatty() and not opts.as_json)
    return RichDisplay() if rich_ok else PlainDisplay(sys.stderr if opts.as_json else sys.stdout)


def _run_recipes(
    recipes: list[LoadedRecipe], out_dir: Path, jobs: int, display: RichDisplay | PlainDisplay
) -> dict[str, dict[str, Any]]:
    """Each recipe's report (name -> report), running ``jobs`` spawned children at a time.

    A child that dies without reporting gets a crash report; on any exception (Ctrl-C
    included) the running children are terminated. The display is closed either way.
    """
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    pending = deque(recipes)
    running: dict[str, Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    by_name = {r.name: r for r in recipes}

    def handle(ev: Event) -> None:
        kind, name, payload = ev
        if kind == "done":
            reports[name] = payload
            display.finished(name, payload)
        else:
            display.event(kind, name, payload)

    try:
        while pending or running:
            while pending and len(running) < jobs:
                r = pending.popleft()
                p = ctx.Process(target=_worker, args=(r, str(out_dir), q, threads), name=f"mconv-run-{r.name}")
                p.start()
                running[r.name] = p
                display.started(r.name, r.file, plan(r))
            try:
                handle(q.get(timeout=0.2))
            except queue_mod.Empty:
                pass
            for name, p in list(running.items()):
                if name in reports:
                    p.join(30)
                    del running[name]
                elif not p.is_alive():
                    _drain(q, handle)
                    if name not in reports:
                        reports[name] = _crashed(by_name[name], p.exitcode, out_dir)
                        display.finished(name, reports[name])
                    del running[name]
    except BaseException:
        for p in running.values():
            p.terminate()
        raise
    finally:
        display.close()
    return reports


def _write_summary(
    recipes: list[LoadedRecipe], reports: dict[str, dict[str, Any]], out_dir: Path, t0: float
) -> dict[str, Any]:
    """The batch summary (recipes in the given order), written as summary.json and summary.md."""
    import json

    from mconv.fsutil import write_text_atomic

    rows = [_summary_row(r, reports[r.name], out_dir) for r in recipes]
    code = exit_code_of(row["exit_code"] for row in rows if row["exit_code"] != EXIT_OK)
    summary = {
        "command": "run",
        "ok": code == EXIT_OK,
        "exit_code": code,
        "out_dir": str(out_dir),
        "seconds": round(time.perf_counter() - t0, 3),
        "recipes": rows,
        "artifacts": [str(out_dir / "summary.json"), str(out_dir / "summary.md")],
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out_dir / "summary.md", render_summary_md(summary))
    return summary


def _drain(q, handle) -> None:
    while True:
        try:
            handle(q.get(timeout=0.5))
        except queue_mod.Empty:
            return


def _failed_report(recipe: LoadedRecipe, error: str) -> dict[str, Any]:
    """The report of a recipe that failed outside its steps."""
    return {
        "recipe": recipe.file,
        "name": recipe.name,
        "status": "failed",
        "exit_code": EXIT_CONVERSION,
        "seconds": 0.0,
        "steps": [],
        "error": error,
    }


def _crashed(recipe: LoadedRecipe, exitcode: int | None, out_dir: Path) -> dict[str, Any]:
    """The report of a recipe whose process died without reporting (a native crash)."""
    import json

    from mconv.fsutil import write_text_atomic

    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
    report = {
        **_failed_report(recipe, f"the recipe's process died ({how}); see {out_dir / recipe.name}"),
        "versions": versions(),
    }
    rdir = out_dir / recipe.name
    rdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(rdir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def failure_message(summary: dict[str, Any]) -> str:
    """One line for a failed batch: which recipes and their first failure."""
    bad = [r for r in summary["recipes"] if r["exit_code"] != EXIT_OK]
    parts = []
    for r in bad[:5]:
        first = (r["failures"] or ["failed"])[0]
        parts.append(f"{r['name']} ({first[:200]})")
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"{len(bad)} of {len(summary['recipes'])} recipe(s) failed: "
        + "; ".join(parts)
        + more
        + f"; see {Path(summary['out_dir']) / 'summary.md'}"
    )


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
