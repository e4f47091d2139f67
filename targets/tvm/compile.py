"""ONNX -> Relax -> a compiled shared library, with Apache TVM.

``tvm.relax.frontend.onnx.from_onnx`` imports the graph (weights become constants),
``--fp16`` applies Relax's ``ToMixedPrecision`` (FP16 storage and arithmetic, FP32
accumulation in conv/matmul) and folds the weights to FP16, ``tune=N`` runs MetaSchedule
(``tuning.py``) on the module :func:`prepare` made, the one the build then takes;
:func:`schedule` applies the tuning records and gives every function
without one the rule schedule of ``schedule.py`` (parallel, vectorized), and
``tvm.compile`` for an LLVM target builds a Relax VM executable that is exported as
``<stem>.so``.

Portability: the library is machine code for one CPU model, ``mcpu`` (default: this
machine's, as LLVM names it, e.g. ``rocketlake``). It runs on that CPU and on newer ones
with the same features; for a library that runs on more machines pick an older model
(``--option mcpu=haswell`` for AVX2, ``x86-64-v3``, ``skylake-avx512``). An ``mcpu`` whose
features this machine lacks is refused: its library could not be verified here.

Shapes are static: TVM compiles fixed shapes (symbolic ones compile, but untuned and
slower), so a dynamic input dimension must be fixed with ``--input NAME:SHAPE`` or
``--batch N``.

tvm is imported inside functions: ``import mconv`` stays light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from mconv.errors import ConversionError, MissingDependencyError, UnsupportedOpsError, UsageError
from mconv.graphinfo import graph_inputs
from mconv.targets.base import TargetOptions, option

# The relax ONNX frontend takes these ops by type whatever their domain says; only the
# onnxruntime contrib ones are meant that way (it has converters for them).
CONTRIB_OPS = ("Attention", "BiasGelu", "EmbedLayerNormalization", "FastGelu", "Gelu", "SkipLayerNormalization")


@dataclass
class TvmOptions(TargetOptions):
    tune: int = option(
        0,
        help="MetaSchedule tuning trials, spread over the model's functions (0: untuned, mconv's rule "
        "schedule; ~10x onnxruntime on ResNet-18 here). Records are cached by model hash in $MCONV_CACHE/tvm "
        "(default ~/.cache/mconv/tvm) and reused by the next build of the same model, target and precision.",
        flag="--tune",
        metavar="TRIALS",
    )
    schedule: str = option(
        "rules",
        help="How functions without a tuning record are scheduled: rules (default: parallel outer loops, "
        "vector lanes inside; TVM's CPU rules for GEMV and norms) or none (TVM's plain serial loops, "
        "~40x onnxruntime).",
        choices=("rules", "none"),
    )
    mcpu: str = option(
        "",
        help="LLVM CPU model the library is compiled for (default: this machine's). An older model "
        "(haswell, x86-64-v3, skylake-avx512) gives a library that runs on more machines.",
        metavar="CPU",
    )


def import_tvm() -> Any:
    try:
        import tvm
        from tvm import relax  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("apache-tvm", "tvm", str(e)) from e
    return tvm


def system_cpu() -> str:
    return import_tvm().target.codegen.llvm_get_system_cpu()


def llvm_target(mcpu: str = "", cores: int | None = None) -> Any:
    """The LLVM target for ``mcpu`` (default: this CPU); usage error for a CPU model LLVM does
    not know or one whose features this machine lacks."""
    tvm = import_tvm()
    codegen = tvm.target.codegen
    here = codegen.llvm_get_system_cpu()
    cpu = mcpu or here
    if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        raise UsageError(f"--option mcpu={cpu}: LLVM knows no such CPU model; try haswell, x86-64-v3 or {here}")
    spec: dict[str, Any] = {"kind": "llvm", "mcpu": cpu}
    if cores:
        spec["num-cores"] = int(cores)
    target = tvm.target.Target(spec)
    if cpu != here:
        have = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": here}))
        lacking = sorted(f for f in codegen.llvm_get_cpu_features(target) if f not in have and "-" not in f)
        if lacking:
            raise UsageError(
                f"--option mcpu={cpu}: this machine ({here}) lacks {', '.join(lacking[:6])}, so the library "
                "could not be verified here; build on such a CPU or pick an older model"
            )
    return target


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int], str]]:
    """Input name -> (shape, dtype); usage error naming the first input with a dynamic dim."""
    out = {}
    for info in graph_inputs(model):
        if not info.is_static or any(d <= 0 for d in info.shape):
            dims = info.shape or ()
            shown = "x".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in dims) or "unknown"
            fixed = [d if isinstance(d, int) and d > 0 else 1 for d in dims] or [1, 3, 224, 224]
            raise UsageError(
                f"--target tvm compiles static shapes: input '{info.name}' is {shown}; fix it with "
                f"--input {info.name}:{'x'.join(map(str, fixed))} (or --batch N for the first axis)"
            )
        out[info.name] = ([int(d) for d in info.shape], info.dtype)
    return out


def supported_ops() -> set[str]:
    """The op types relax's ONNX frontend converts (its convert map, plus If handled inline)."""
    import_tvm()
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    ops = set(_get_convert_map()) | {"If"}
    return ops | {f"com.microsoft::{op}" for op in CONTRIB_OPS if op in ops}


def import_onnx(model: onnx.ModelProto) -> Any:
    """The Relax module of ``model`` (weights as constants); frontend failures become op errors."""
    import_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    from mconv.quiet import quiet

    try:
        with quiet():  # the frontend warns through Python and prints the checker's findings
            return from_onnx(model, keep_params_in_input=False)
    except Exception as e:
        text = str(e).strip().splitlines()
        first = next((ln for ln in text if ln.strip()), type(e).__name__)
        if "not supported" in first and ":" in first:
            ops = [o.strip() for o in first.rsplit(":", 1)[1].split(",") if o.strip()]
            found = {op: [n.name or n.output[0] for n in model.graph.node if n.op_type == op] for op in ops}
            if any(found.values()):
                raise UnsupportedOpsError("tvm", {k: v for k, v in found.items() if v}) from e
        raise ConversionError(f"TVM's ONNX frontend cannot import the model: {first[:300]}") from e


def lower_precision(mod: Any, precision: str) -> Any:
    """``fp16``: ToMixedPrecision (FP32 accumulation) and FP16 weights folded in place."""
    if precision != "fp16":
        return mod
    tvm = import_tvm()
    from tvm import relax

    seq = tvm.transform.Sequential(
        [
            relax.transform.ConvertToDataflow(),
            relax.transform.ToMixedPrecision(out_dtype="float32"),
            relax.transform.FoldConstant(),
        ]
    )
    try:
        return seq(mod)
    except Exception as e:
        raise ConversionError(f"TVM's ToMixedPrecision failed for --fp16: {str(e).strip()[:300]}") from e


def prepare(mod: Any, target: Any) -> Any:
    """What relax's ``static_shape_tuning`` pipeline does before it tunes (decompose, legalize,
    fuse): tuning extracts its tasks from this module, and the build applies the records to
    the same module, so that the workloads match."""
    tvm = import_tvm()
    from tvm import relax

    with target:
        passes = [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
        ]
        return tvm.transform.Sequential(passes)(mod)


def schedule(mod: Any, target: Any, database_dir: Path | None = None, rules: bool = True) -> Any:
    """``mod`` (made by :func:`prepare`) with the tuned schedules in ``database_dir`` (if any)
    applied and, with ``rules``, the default schedule (``schedule.py``) on every function left
    unscheduled."""
    import_tvm()
    from tvm import relax

    with target:
        if database_dir is not None:
            mod = relax.transform.MetaScheduleApplyDatabase(str(database_dir))(mod)
        if rules:
            from mconv.targets.tvm.schedule import default_schedule

            mod = default_schedule(target)(mod)
    return mod


def compile_library(mod: Any, target: Any, path: Path, database_dir: Path | None = None, *, rules: bool = True) -> None:
    """``tvm.compile`` of ``mod`` (made by :func:`prepare`) scheduled by :func:`schedule`, exported
    to ``path`` through a temporary name beside it."""
    tvm = import_tvm()

    from mconv.quiet import quiet

    try:
        with quiet():
            executable = tvm.compile(schedule(mod, target, database_dir, rules), target)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.so")
            executable.export_library(str(tmp))
        os.replace(tmp, path)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        raise ConversionError(f"TVM could not compile the model for {target}: {first[:300]}") from e
