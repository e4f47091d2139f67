"""Running an IR on OpenVINO's CPU plugin."""

from __future__ import annotations

from typing import Any

import numpy as np

from mconv.errors import (
    ConversionError,
    InputError,
)
from mconv.targets.base import Artifact, Feeds, Runner
from mconv.targets.openvino.convert import import_openvino

# ---------------------------------------------------------------------------
# Runner and target


class OpenVinoRunner(Runner):
    """Runs an IR on OpenVINO's CPU plugin at FP32 inference precision.

    Outputs are keyed by the ONNX output names (the IR keeps them as tensor names).
    An artifact with ``meta["probe_outputs"]`` (``verify --locate``) instead returns
    those ONNX-named tensors the IR keeps on its ports: each such port becomes an
    extra result before compiling.
    """

    def __init__(self, artifact: Artifact, *, threads: int | None = None, device: str = "CPU") -> None:
        super().__init__(artifact, threads=threads)
        self.device = device
        self._compiled: Any = None
        self._request: Any = None
        self._inputs: list[str] = []
        self._outputs: list[tuple[str, Any]] = []

    def config(self) -> dict[str, Any]:
        import openvino.properties.hint as hints

        cfg: dict[str, Any] = {
            hints.inference_precision: "f32",
            hints.performance_mode: hints.PerformanceMode.LATENCY,
        }
        if self.threads:
            import openvino.properties as props

            cfg[props.inference_num_threads] = int(self.threads)
        return cfg

    def load(self) -> None:
        if self._compiled is not None:
            return
        ov = import_openvino()
        xml = self.artifact.main
        probes = self.artifact.meta.get("probe_outputs")
        try:
            model: Any = str(xml)
            if probes:
                model = ov.Core().read_model(str(xml))
                probes = _add_probe_outputs(model, probes)
            self._compiled = ov.Core().compile_model(model, self.device, self.config())
        except Exception as e:
            raise ConversionError(f"{xml}: OpenVINO cannot load/compile the IR on {self.device}: {e}") from e
        self._request = self._compiled.create_infer_request()
        self._inputs = [p.get_any_name() for p in self._compiled.inputs]
        if probes is not None:
            by_name = {}
            for port in self._compiled.outputs:
                for n in port.get_names():
                    by_name.setdefault(n, port)
            self._outputs = [(n, by_name[n]) for n in probes if n in by_name]
            return
        wanted = list(self.artifact.meta.get("output_names") or [])
        self._outputs = []
        for i, port in enumerate(self._compiled.outputs):
            names = port.get_names()
            name = next((n for n in wanted if n in names), None)
            if name is None:
                name = wanted[i] if i < len(wanted) and not names else port.get_any_name()
            self._outputs.append((name, port))

    def input_names(self) -> list[str]:
        self.load()
        return list(self._inputs)

    def output_names(self) -> list[str]:
        self.load()
        return [n for n, _ in self._outputs]

    def infer_impl(self, feeds: Feeds) -> Feeds:
        self.load()
        try:
            # Inference is synchronous and the base class hands over contiguous arrays:
            # OpenVINO may read them in place instead of copying every input.
            result = self._request.infer(feeds, share_inputs=True)
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise InputError(f"{self.artifact.main}: OpenVINO inference failed for inputs {shapes}: {e}") from e
        # The request reuses its buffers: copy.
        return {name: np.array(result[port], copy=True) for name, port in self._outputs}


def _add_probe_outputs(model: Any, names: list[str]) -> list[str]:
    """Make every port carrying one of ``names`` a result of ``model``; the names found, in order."""
    wanted = set(names)
    ports: list[tuple[str, Any]] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        for out in op.outputs():
            hit = sorted(out.get_names() & wanted)
            if hit:
                ports.append((hit[0], out))
    if ports:
        model.add_outputs([p for _, p in ports])
    return [n for n, _ in ports]
