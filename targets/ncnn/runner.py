"""Run an ncnn artifact with the ncnn Python package.

Feeds are ONNX-shaped (with their batch axis); each is reshaped to the Input
blob's Mat shape (only size-1 axes differ). Outputs come back reshaped to the
ONNX output shapes recorded in ``Artifact.meta`` and keyed by ONNX names.
Artifacts recognised without mconv's metadata use the param file's Input
layers and its unconsumed blobs, shaped as ncnn returns them.
"""

from __future__ import annotations

import numpy as np

from mconv.errors import InputError, MissingDependencyError
from mconv.targets.base import Artifact, Feeds, Runner
from mconv.targets.ncnn.param import param_inputs, param_io, read_param


def import_ncnn():
    try:
        import ncnn
    except ImportError as e:
        raise MissingDependencyError("ncnn", "ncnn", str(e)) from e
    return ncnn


class NcnnRunner(Runner):
    """Runs ``<stem>.param``/``<stem>.bin`` on the CPU (vulkan off)."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None, keep_intermediates: bool = False) -> None:
        super().__init__(artifact, threads=threads)
        self.net = None
        # ncnn's light mode frees a blob once its consumer ran; reading several
        # intermediate blobs (calibration) needs it off.
        self.keep_intermediates = keep_intermediates
        meta = artifact.meta or {}
        self._inputs = list(meta.get("inputs", []))
        self._outputs = list(meta.get("outputs", []))
        if not self._inputs or not self._outputs:
            ins, outs = param_io(artifact.main.read_text(errors="replace"))
            self._inputs = self._inputs or [{"name": b, "blob": b} for b in ins]
            self._outputs = self._outputs or [{"name": b, "blob": b} for b in outs]
        self._in_nc: dict[str, tuple[int, ...]] = {}
        self._extract = list(self._outputs)

    def load(self) -> None:
        ncnn = import_ncnn()
        net = ncnn.Net()
        # Options must be set before load_param: layers pick their kernels then.
        net.opt.use_vulkan_compute = False
        fp32 = self.artifact.precision == "fp32"
        net.opt.use_fp16_storage = not fp32
        net.opt.use_fp16_packed = not fp32
        net.opt.use_fp16_arithmetic = False if fp32 else self.artifact.precision == "fp16"
        net.opt.use_bf16_storage = False
        net.opt.use_int8_inference = self.artifact.precision == "int8"
        if self.threads:
            net.opt.num_threads = int(self.threads)
        if self.keep_intermediates:
            net.opt.lightmode = False
        param = str(self.artifact.main)
        binf = self.artifact.main.with_suffix(".bin")
        if net.load_param(param) != 0:
            raise InputError(f"{param}: ncnn could not read this .param file")
        if net.load_model(str(binf)) != 0:
            raise InputError(f"{binf}: ncnn could not read the weights (does it match the .param?)")
        self.net = net
        text = self.artifact.main.read_text(errors="replace")
        self._in_nc = _input_shapes(text)
        # Extract in producer order: in light mode an upstream blob is gone
        # once a downstream output has been computed.
        order = _producer_order(text)
        self._extract = sorted(self._outputs, key=lambda o: order.get(o["blob"], len(order)))

    def input_names(self) -> list[str]:
        return [i["name"] for i in self._inputs]

    def output_names(self) -> list[str]:
        return [o["name"] for o in self._outputs]

    def infer_impl(self, feeds: Feeds) -> Feeds:
        ncnn = import_ncnn()
        if self.net is None:
            self.load()
        assert self.net is not None
        out: Feeds = {}
        with self.net.create_extractor() as ex:
            for spec in self._inputs:
                is_int = np.dtype(spec.get("dtype") or "float32").kind in "iu"
                if spec.get("feed", "int32" if is_int else "float") == "int32":
                    # Token ids for Embed: ncnn reads this Mat's bytes as int32 (older
                    # sidecars have no "feed": their integer inputs are all ids).
                    x = np.asarray(feeds[spec["name"]]).astype(np.int32).view(np.float32)
                else:
                    x = np.asarray(feeds[spec["name"]], dtype=np.float32)
                nc = self._in_nc.get(spec["blob"])
                if nc is None:
                    nc = _squeeze_batch(x.shape)
                if int(np.prod(nc)) != x.size:
                    raise InputError(
                        f"input '{spec['name']}' of shape {list(x.shape)} does not fit the model's "
                        f"input blob {spec['blob']} of shape {list(nc)}"
                    )
                # Mat(numpy) shares memory with the array: clone so ncnn owns it.
                ex.input(spec["blob"], ncnn.Mat(np.ascontiguousarray(x.reshape(nc))).clone())
            for spec in self._extract:
                ret, mat = ex.extract(spec["blob"])
                if ret != 0:
                    raise InputError(f"ncnn failed to compute output '{spec['name']}' (code {ret})")
                y = np.array(mat).copy()
                shape = spec.get("shape")
                if shape is not None:
                    y = y.reshape(shape)
                dt = spec.get("dtype")
                out[spec["name"]] = y.astype(dt) if dt else y
        return {o["name"]: out[o["name"]] for o in self._outputs}


def _producer_order(param_text: str) -> dict[str, int]:
    """Blob -> index of the layer producing it."""
    return {b: i for i, layer in enumerate(read_param(param_text)) for b in layer.outputs}


def _squeeze_batch(shape: tuple[int, ...]) -> tuple[int, ...]:
    s = tuple(shape)
    if len(s) >= 2 and s[0] == 1:
        s = s[1:]
    return s


def _input_shapes(param_text: str) -> dict[str, tuple[int, ...]]:
    """Input blob -> Mat shape (outermost first) from the Input layers' 0/1/11/2 params."""
    return {i.name: i.shape[1:] for i in param_inputs(param_text) if i.shape is not None and len(i.shape) > 1}
