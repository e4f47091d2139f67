"""Running a ``.mnn`` file with MNN's Module API on the CPU."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mconv.errors import ConversionError, InputError
from mconv.targets.base import Artifact, Feeds, Runner
from mconv.targets.mnn.files import read_net

# numpy dtype of a feed -> (MNN dtype name, the numpy dtype MNN reads it as).
_FEED_TYPES = {
    "float32": ("float", np.float32),
    "float64": ("float", np.float32),
    "float16": ("float", np.float32),
    "int64": ("int", np.int32),
    "int32": ("int", np.int32),
    "bool": ("int", np.int32),
    "uint8": ("uint8", np.uint8),
    "int8": ("int8", np.int8),
}


class MnnRunner(Runner):
    """Runs a ``.mnn`` model through ``MNN.nn.load_module_from_file`` on MNN's CPU backend.

    Outputs are keyed by the ONNX output names (MNN keeps tensor names) and returned as
    plain NCHW numpy arrays (MNN may hand back its packed NC4HW4 layout). Arithmetic runs
    at ``precision: high`` (FP32): an FP16 file stores half weights, it does not ask for
    half arithmetic, so every artifact is compared with onnxruntime at FP32. Weight-only
    INT8 files run with ``memory: low``, MNN's mode for keeping the 8-bit weights (on this
    x86 CPU outputs and latency were the same as with ``normal``). An artifact with
    ``meta["probe_outputs"]`` (``verify --locate``) returns those tensors it still has.
    """

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        super().__init__(artifact, threads=threads)
        self._module: Any = None
        self._expr: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    def config(self, int8_mode: str | None) -> dict[str, Any]:
        threads = int(self.threads or os.cpu_count() or 1)
        return {
            "backend": "CPU",
            "numThread": threads,
            "precision": "high",
            "memory": "low" if int8_mode == "weight" else "normal",
        }

    def load(self) -> None:
        if self._module is not None:
            return
        from mconv.quiet import quiet

        path = self.artifact.main
        net = read_net(path)
        self._inputs = [t.name for t in net.inputs]
        probes = self.artifact.meta.get("probe_outputs")
        known = set(net.tensors)
        self._outputs = [n for n in probes if n in known] if probes is not None else list(net.outputs)
        try:
            with quiet():  # the library prints a CPU banner and settings from C++
                import MNN

                rt = MNN.nn.create_runtime_manager((self.config(net.int8_mode),))
                self._module = MNN.nn.load_module_from_file(str(path), self._inputs, self._outputs, runtime_manager=rt)
        except Exception as e:
            raise ConversionError(f"{path}: MNN cannot load it: {e}") from e
        if self._module is None:
            raise ConversionError(f"{path}: MNN cannot load it (the runtime returned no module)")
        self._expr = MNN.expr

    def input_names(self) -> list[str]:
        self.load()
        return list(self._inputs)

    def output_names(self) -> list[str]:
        self.load()
        return list(self._outputs)

    def _var(self, arr: np.ndarray) -> Any:
        F = self._expr
        kind, np_type = _FEED_TYPES.get(arr.dtype.name, ("float", np.float32))
        data = np.ascontiguousarray(arr, dtype=np_type)
        return F.const(data, list(data.shape), F.NCHW, getattr(F, kind))

    def _array(self, var: Any) -> np.ndarray:
        F = self._expr
        if var.data_format == F.NC4HW4:
            var = F.convert(var, F.NCHW)
        return np.array(var.read(), copy=True).reshape(var.shape)

    def infer_impl(self, feeds: Feeds) -> Feeds:
        self.load()
        try:
            outs = self._module.forward([self._var(feeds[n]) for n in self._inputs])
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            return {name: self._array(v) for name, v in zip(self._outputs, outs)}
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise InputError(f"{self.artifact.main}: MNN inference failed for inputs {shapes}: {e}") from e
