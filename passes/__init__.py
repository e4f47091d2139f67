"""ONNX -> ONNX passes: a registry and the default pipeline.

``optimize(model)`` runs the default pipeline and returns the new model and one
report per pass (nodes before/after). Passes are registered by name; duplicate
names are rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from mconv.errors import ConversionError, MconvError, UsageError
from mconv.passes.base import Pass, PassReport, PassResult
from mconv.passes.dce import EliminateDeadNodesPass
from mconv.passes.eliminate import EliminateNoOpsPass
from mconv.passes.fold import FoldConstantsPass, FoldQuantizedWeightsPass
from mconv.passes.fuse import FuseConvBatchNormPass
from mconv.passes.reparam import MergeParallelConvsPass
from mconv.passes.shape_inference import InferShapesPass
from mconv.passes.simplify import SimplifyPass

__all__ = [
    "DEFAULT_PIPELINE",
    "Pass",
    "PassReport",
    "PassResult",
    "all_passes",
    "get_pass",
    "optimize",
    "parse_pass_list",
    "register_pass",
]

_REGISTRY: dict[str, tuple[Callable[[], Pass], str]] = {}


def register_pass(factory: Callable[[], Pass], name: str | None = None, doc: str | None = None) -> None:
    key = name or factory.name  # type: ignore[attr-defined]
    if key in _REGISTRY:
        raise ValueError(f"pass '{key}' is already registered")
    text = doc or ((factory.__doc__ or "").strip().splitlines() or [""])[0]
    _REGISTRY[key] = (factory, text)


for _cls in (
    InferShapesPass,
    FoldConstantsPass,
    FoldQuantizedWeightsPass,
    SimplifyPass,
    EliminateNoOpsPass,
    FuseConvBatchNormPass,
    MergeParallelConvsPass,
    EliminateDeadNodesPass,
):
    register_pass(_cls)

# Own passes first: they shrink the graph cheaply, so onnxsim sees less; shape
# inference again at the end so writers see every shape.
DEFAULT_PIPELINE: tuple[str, ...] = (
    "infer_shapes",
    "fold_constants",
    "eliminate_identity",
    "fuse_conv_bn",
    "merge_parallel_convs",
    "fuse_conv_bn",
    "eliminate_dead_nodes",
    "simplify",
    "infer_shapes",
    "fold_constants",
    "eliminate_identity",
    "eliminate_dead_nodes",
    "infer_shapes",
)


def all_passes() -> dict[str, str]:
    """Registered pass names and their one-line descriptions."""
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def get_pass(name: str) -> Pass:
    if name not in _REGISTRY:
        raise UsageError(
            f"--passes: unknown pass '{name}'; choose from {', '.join(sorted(_REGISTRY))} (see `mconv passes`)"
        )
    return _REGISTRY[name][0]()


def parse_pass_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UsageError("--passes: empty list; give names like infer_shapes,fold_constants or omit it")
    for n in names:
        get_pass(n)  # validate before any work starts
    return names


def optimize(
    model: onnx.ModelProto, passes: Sequence[str | Pass] | None = None
) -> tuple[onnx.ModelProto, list[PassReport]]:
    """Run ``passes`` (registry names or configured Pass instances; the default pipeline
    when None) in order; name the failing pass on error."""
    names = list(passes) if passes is not None else list(DEFAULT_PIPELINE)
    if model.ir_version < 4:
        # IR < 4 requires every initializer to be a graph input; folding adds
        # initializers, and IR 4 is valid for every opset >= 1. Weights listed as
        # inputs would stay overridable (runtimes cannot treat them as constants).
        model.ir_version = 4
        inits = {t.name for t in model.graph.initializer}
        real = [i for i in model.graph.input if i.name not in inits]
        del model.graph.input[:]
        model.graph.input.extend(real)
    reports: list[PassReport] = []
    for item in names:
        p = get_pass(item) if isinstance(item, str) else item
        name = p.name
        try:
            result, report = p(model)
        except MconvError:
            raise
        except Exception as e:
            raise ConversionError(f"pass '{name}' failed: {type(e).__name__}: {e}") from e
        model = result.model
        reports.append(report)
    return model, reports
