"""Run a ``.tflite`` file with LiteRT's interpreter (``ai-edge-litert``).

Feeds are in the artifact's I/O layout (ONNX's by default; see the ``io_layout``
option); outputs are keyed by the ONNX output names, which the writer gives the
graph's output tensors (and its SignatureDef). A feed whose shape differs from
the model's resizes that input first.
"""

from __future__ import annotations

import numpy as np

from mconv.errors import InputError, MissingDependencyError
from mconv.quiet import quiet
from mconv.targets.base import Artifact, Feeds, Runner


def import_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise MissingDependencyError("ai-edge-litert", "litert", str(e)) from e
    return Interpreter


class LiteRtRunner(Runner):
    """Runs ``<stem>.tflite`` on the CPU (LiteRT's default XNNPACK delegate)."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        super().__init__(artifact, threads=threads)
        self.interp = None
        self._ins: dict[str, dict] = {}
        self._outs: dict[str, dict] = {}

    def load(self) -> None:
        if self.interp is not None:
            return
        Interpreter = import_interpreter()
        try:
            with quiet():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" from C++
                interp = Interpreter(model_path=str(self.artifact.main), num_threads=self.threads or None)
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InputError(f"{self.artifact.main}: LiteRT cannot load this model: {e}") from e
        self.interp = interp
        self._ins = {d["name"]: d for d in interp.get_input_details()}
        self._outs = {d["name"]: d for d in interp.get_output_details()}

    def input_names(self) -> list[str]:
        self.load()
        return list(self._ins)

    def output_names(self) -> list[str]:
        self.load()
        return list(self._outs)

    def infer_impl(self, feeds: Feeds) -> Feeds:
        self.load()
        specs = {m["name"]: m for m in self.artifact.meta.get("inputs", [])}
        onnx_fed = [
            n
            for n, m in specs.items()
            if m.get("layout") == "nhwc" and n in feeds and list(feeds[n].shape) == m.get("onnx_shape") != m["shape"]
        ]
        if onnx_fed:
            feeds = {n: x.transpose(0, 2, 3, 1) if n in onnx_fed else x for n, x in feeds.items()}
        out = self._invoke(feeds)
        if onnx_fed:
            nhwc = {m["name"] for m in self.artifact.meta.get("outputs", []) if m.get("layout") == "nhwc"}
            out = {n: np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if n in nhwc else y for n, y in out.items()}
        return out

    def _invoke(self, feeds: Feeds) -> Feeds:
        interp = self.interp
        resized = False
        for name, d in self._ins.items():
            x = feeds[name]
            if tuple(x.shape) != tuple(d["shape"]):
                interp.resize_tensor_input(d["index"], list(x.shape))
                resized = True
        if resized:
            interp.allocate_tensors()
            self._ins = {d["name"]: d for d in interp.get_input_details()}
        for name, d in self._ins.items():
            interp.set_tensor(d["index"], _to_input(feeds[name], d))
        try:
            interp.invoke()
        except (ValueError, RuntimeError) as e:
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise InputError(f"{self.artifact.main}: LiteRT inference failed for inputs {shapes}: {e}") from e
        want = {o["name"]: o.get("dtype") for o in self.artifact.meta.get("outputs", [])}
        out: Feeds = {}
        for name, d in self._outs.items():
            y = np.array(interp.get_tensor(d["index"]), copy=True)
            if y.dtype == np.int8 and np.dtype(want.get(name) or "int8").kind == "f":
                scale, zp = d["quantization"]
                y = (y.astype(np.float32) - zp) * scale
            out[name] = y.astype(want[name]) if want.get(name) else y
        return out


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the input tensor's dtype; float feeds of an int8 input are quantized."""
    if detail["dtype"] == np.int8 and np.asarray(x).dtype.kind == "f":
        scale, zp = detail["quantization"]
        return np.clip(np.round(np.asarray(x) / scale) + zp, -128, 127).astype(np.int8)
    return np.ascontiguousarray(x, dtype=detail["dtype"])
