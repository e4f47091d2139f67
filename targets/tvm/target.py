"""The TVM target: a compiled library (``<stem>.so``) plus ``<stem>.tvm.json``, run by
TVM's Relax VM; ``--tune N`` for MetaSchedule, records cached by model hash.

Precisions, as measured (light squeezenet, untuned, this x86 machine):

* FP32: rel 4.8e-6 to onnxruntime.
* FP16 (``ToMixedPrecision``, FP32 accumulation, FP16 weights): cos 0.999999, a library
  of half the size (3.0 vs 5.5 MB), 1.7x slower than FP32 on x86 without AVX512-FP16
  (LLVM converts every FP16 value to FP32 and back); for size, or for CPUs that compute
  in FP16.
* INT8 is refused: the relax ONNX frontend lowers a Q/DQ model's QuantizeLinear/
  DequantizeLinear to float arithmetic (dequantize, then an FP32 conv), and TVM 0.27 has
  no integer conv/matmul lowering from ONNX on the CPU: the Q/DQ squeezenet ran at FP32's
  speed (267 vs 249 ms) with INT8's error (cos 0.9993).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import onnx

from mconv.graphinfo import TensorInfo
from mconv.targets.base import Artifact, BuildOptions, Finding, Target
from mconv.targets.tvm import files
from mconv.targets.tvm.compile import (
    TvmOptions,
    compile_library,
    import_onnx,
    llvm_target,
    lower_precision,
    prepare,
    static_shapes,
    supported_ops,
)
from mconv.targets.tvm.runner import TvmRunner

UNTUNED_NOTE = (
    "tvm: untuned build (tune=0): mconv's rule schedule (parallel, vectorized; ~10x onnxruntime's latency on "
    "ResNet-18 here); --tune N runs N MetaSchedule trials (cached per model)"
)
PLAIN_NOTE = (
    "tvm: untuned build (tune=0) with schedule=none: TVM's plain serial loops (~140x onnxruntime's latency on "
    "ResNet-18 here)"
)


class TvmTarget(Target):
    """Apache TVM (Relax): ONNX frontend, LLVM for this CPU, optional MetaSchedule tuning."""

    name: ClassVar[str] = "tvm"
    extra: ClassVar[str] = "tvm"
    runtime_modules: ClassVar[tuple[str, ...]] = ("tvm",)
    description: ClassVar[str] = (
        "Apache TVM compiled library (.so + .tvm.json) for this CPU; fp32, fp16 (mixed precision); "
        "--tune N MetaSchedule trials, cached (int8: no integer kernels from ONNX in TVM 0.27)"
    )
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    artifact_kind: ClassVar[str] = "TVM .so (+ .tvm.json)"
    runtime_packages: ClassVar[tuple[str, ...]] = ("apache-tvm", "apache-tvm-ffi")
    known_domains: ClassVar[tuple[str, ...]] = ()
    Options = TvmOptions

    def supported_ops(self) -> set[str] | None:
        if self.runtime_missing():
            return None
        return supported_ops()

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        static_shapes(model)
        opts = self.options_of(options)
        if opts.tune < 0:
            from mconv.errors import UsageError

            raise UsageError(f"--tune {opts.tune}: give a number of trials >= 0 (0: untuned)")
        if not self.runtime_missing():
            llvm_target(opts.mcpu)
        if opts.tune:
            return []
        return [UNTUNED_NOTE if opts.schedule == "rules" else PLAIN_NOTE]

    def findings(self, model: onnx.ModelProto, options: BuildOptions) -> list[Finding]:
        from mconv.errors import UsageError

        try:
            static_shapes(model)
        except UsageError as e:
            return [Finding("error", "dynamic-shape", str(e))]
        return []

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        opts = self.options_of(options)
        shapes = static_shapes(model)
        target = llvm_target(opts.mcpu, cores=_cores() if opts.tune else None)
        onnx_bytes = model.SerializeToString() if opts.tune else b""
        outputs = [o.name for o in model.graph.output]
        # Prepared once: tuning extracts its tasks from this module and the build applies
        # the records to it.
        mod = prepare(lower_precision(import_onnx(model), options.precision), target)
        tuning, warnings, database = None, [], None
        if opts.tune:
            from mconv.targets.tvm.tuning import cache_key, tune

            tuning = tune(mod, target, cache_key(onnx_bytes, target, options.precision), opts.tune)
            warnings.append(tuning.message())
            database = tuning.folder
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        lib = out_dir / f"{stem}.so"
        compile_library(mod, target, lib, database, rules=opts.schedule == "rules")
        meta = _sidecar_meta(shapes, outputs, target, options.precision, tuning)
        side = files.sidecar_of(lib)
        files.write_sidecar(side, meta)
        artifact = files.artifact_from(lib, side, {**meta, "precision": options.precision})
        artifact.meta["warnings"] = warnings
        return artifact

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> TvmRunner:
        if not artifact.meta.get("inputs"):
            found = files.recognise_files(artifact.main)
            if found:
                artifact = dataclasses.replace(artifact, meta={**artifact.meta, **files.artifact_from(*found).meta})
        runner = TvmRunner(artifact, threads=threads)
        runner.load()
        return runner

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        if artifact.meta.get("inputs"):
            return files.inputs_of(artifact.meta)
        found = files.recognise_files(artifact.main)
        return files.inputs_of(files.artifact_from(*found).meta) if found else None

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        found = files.recognise_files(Path(path))
        return files.artifact_from(*found) if found else None


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _sidecar_meta(shapes: dict, outputs: list[str], target: Any, precision: str, tuning: Any) -> dict[str, Any]:
    import tvm

    return {
        "inputs": [{"name": n, "shape": s, "dtype": d} for n, (s, d) in shapes.items()],
        "outputs": outputs,
        "target": str(target),
        "mcpu": str(target.attrs.get("mcpu", "")),
        "precision": precision,
        "tvm_version": tvm.__version__,
        "tuning": tuning.to_json() if tuning else None,
    }
