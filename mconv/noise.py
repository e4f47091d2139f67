"""How sensitive a model is to float rounding: the FP32 verification floor.

A correct FP32 artifact still differs from onnxruntime: another runtime sums in
another order, fuses other ops and approximates ``exp``/``HardSigmoid``/``Erf``
its own way. How far such noise grows by the output depends on the model (its
depth, its conditioning), so one fixed relative bound refuses correct artifacts
of deep nets while it is loose for shallow ones.

:func:`rounding_floor` measures that growth on the verification samples: it runs
the source model a second time in onnxruntime, with every graph optimization off
(other kernels, no fusions) and with the weights of every Conv, ConvTranspose,
Gemm and MatMul moved by one ulp in a seeded random direction (each weight
rounded the other way), and compares with the normal reference by the same
rule the artifact is compared with. The largest relative difference per output
is that output's floor; :mod:`mconv.metrics` lets an FP32 artifact's error
reach a multiple of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

Feeds = dict[str, np.ndarray]

# Ops whose weights (constant inputs) are nudged: they carry nearly all the arithmetic.
NUDGED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def nudged_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose float weights of :data:`NUDGED_OPS` moved one ulp each.

    Each element moves up or down at random (seeded): the perturbation float
    rounding of the weights themselves would make, spread over the whole model.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: i for i, t in enumerate(m.graph.initializer)}
    wanted: list[str] = []
    for node in m.graph.node:
        if node.op_type in NUDGED_OPS:
            wanted += [x for x in node.input[:2] if x in inits]
    rng = np.random.default_rng(seed)
    for name in dict.fromkeys(wanted):
        t = m.graph.initializer[inits[name]]
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(t)
        up = rng.random(arr.shape) < 0.5
        out = np.where(up, np.nextafter(arr, np.float32(np.inf)), np.nextafter(arr, np.float32(-np.inf)))
        m.graph.initializer[inits[name]].CopyFrom(numpy_helper.from_array(out.astype(np.float32), name))
    return m


def probe_outputs(model: onnx.ModelProto | str, samples: list[Feeds]) -> list[Feeds]:
    """The perturbed run: nudged weights, onnxruntime with graph optimizations disabled."""
    from mconv.runner import reference_outputs

    if isinstance(model, str):
        from mconv.modelio import load_onnx

        model = load_onnx(model)
    outs, _ = reference_outputs(nudged_weights(model), samples, optimize=False)
    return outs


def probe_outputs_isolated(
    path: str | onnx.ModelProto, samples: list[Feeds], *, timeout: float | None = None
) -> list[Feeds]:
    """:func:`probe_outputs` in a child process, on a file (big models: weights held once
    here) or on a ModelProto (sent serialized)."""
    from mconv.isolate import call_isolated

    return call_isolated(
        "mconv.noise:probe_outputs", {"model": path, "samples": samples}, timeout=timeout, what="onnxruntime probe"
    )


class RoundingFloor:
    """The per-output floor, computed once on first use and kept (one model, one sample set).

    ``compute`` returns the perturbed outputs per sample; the floor of an output is
    the relative error of those outputs against the reference, by the rule
    :func:`mconv.metrics.compare_outputs` uses for that output.
    """

    def __init__(self, compute: Callable[[], list[Feeds]]) -> None:
        self._compute = compute
        self._probe: list[Feeds] | None = None
        self._values: dict[str, float | None] = {}
        self._aligned: list[Feeds] | None = None
        self.error: str | None = None

    @property
    def measured(self) -> bool:
        return self._probe is not None

    def value(self, name: str, refs: list[Feeds], selection: dict[str, str]) -> float | None:
        """The floor of output ``name`` (relative to its largest magnitude); None if unknown."""
        if name not in self._values:
            probe = self.probe()
            if probe is None or any(name not in p for p in probe):
                self._values[name] = None
            else:
                from mconv.metrics import align_selected, output_metrics

                if self._aligned is None:
                    self._aligned, _ = align_selected(refs, probe, selection)
                m = output_metrics(name, refs, self._aligned)
                self._values[name] = m.rel if not m.reason and math.isfinite(m.rel) else None
        return self._values[name]

    def probe(self) -> list[Feeds] | None:
        if self._probe is None and self.error is None:
            from mconv.errors import MconvError

            try:
                self._probe = self._compute()
            except MconvError as e:  # the floor is a help; without it the fixed bound applies
                self.error = e.message
        return self._probe


def rounding_floor(model: onnx.ModelProto, samples: list[Feeds]) -> RoundingFloor:
    """The floor of ``model`` on ``samples``, computed lazily (only when an artifact needs it)."""
    return RoundingFloor(lambda: probe_outputs(model, samples))
