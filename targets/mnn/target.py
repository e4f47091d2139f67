"""The MNN target: ``<stem>.mnn`` through MNN's converter, verified by MNN's runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import onnx

from mconv.errors import InputError, UsageError
from mconv.graphinfo import TensorInfo, activation_quantizers, graph_inputs, graph_outputs
from mconv.targets.base import Artifact, BuildOptions, Target, TargetOptions, option
from mconv.targets.mnn.files import read_net
from mconv.targets.mnn.ops import SUPPORTED_OPS
from mconv.targets.mnn.runner import MnnRunner

INT8_MODES = ("weight", "full")


@dataclass
class MnnOptions(TargetOptions):
    int8_mode: str = option(
        "weight",
        help="weight: 8-bit weights, no calibration of its own (--calib only feeds verification); "
        "full: weights and activations calibrated by MNN's quantizer (KL) on --calib. Default weight: "
        "closer to onnxruntime, quicker to build and as fast as full on the CNN and ViT measured "
        "(bench/mnn_int8.py).",
        choices=INT8_MODES,
        precisions=("int8",),
    )


def _tensor_json(t: TensorInfo) -> dict:
    return {"name": t.name, "shape": None if t.shape is None else list(t.shape), "dtype": t.dtype}


class MnnTarget(Target):
    """Alibaba MNN (``.mnn``): FP32, FP16 weights, INT8 weight-only or calibrated."""

    name: ClassVar[str] = "mnn"
    extra: ClassVar[str] = "mnn"
    description: ClassVar[str] = "MNN model (.mnn) for phones; fp32, fp16 weights, int8 (weight-only or calibrated)"
    artifact_kind: ClassVar[str] = "MNN .mnn"
    runtime_packages: ClassVar[tuple[str, ...]] = ("mnn",)
    isolate: ClassVar[bool] = True
    Options = MnnOptions
    # int8 weights behind DequantizeLinear reach MNN's converter as float: it expands them to
    # float anyway, and reads a dequantized BatchNormalization scale wrongly.
    required_passes: ClassVar[tuple[str, ...]] = ("fold_quantized_weights", "eliminate_dead_nodes")

    def supported_ops(self) -> set[str] | None:
        return set(SUPPORTED_OPS)

    def unsupported(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        # MNN's converter (mnn 3.6.1) aborts on Q/DQ over activations, from onnxruntime's
        # quantize_static and from `--target onnx --int8` alike: refused before it runs.
        # int8 weights behind DequantizeLinear alone are folded (required_passes).
        out = super().unsupported(model)
        quantizers = activation_quantizers(model)
        if quantizers:
            out["QuantizeLinear"] = quantizers
        return out

    def runtime_missing(self) -> str | None:
        import importlib.util

        # find_spec only: importing the modules would load (and print from) the native library.
        if importlib.util.find_spec("_tools") is None or importlib.util.find_spec("MNN") is None:
            return "MNN (pip package `mnn`) is not installed; install it with `pip install 'mconv[mnn]'`"
        return None

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        opts = self.options_of(options)
        if options.precision == "int8" and opts.int8_mode == "full" and not options.calib:
            raise UsageError("--option int8_mode=full needs calibration data: add --calib DATA")
        return []

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        from mconv.limits import runner_timeout
        from mconv.targets.mnn.convert import convert_onnx, quantize_full
        from mconv.targets.mnn.legacy import flatten_legacy_softmax

        self.preflight(model, options)
        flatten_legacy_softmax(model)
        mode = self.options_of(options).int8_mode if options.precision == "int8" else None
        meta = {
            "inputs": [_tensor_json(t) for t in graph_inputs(model)],
            "output_names": [t.name for t in graph_outputs(model)],
            "int8_mode": mode,
        }
        if mode == "full":
            meta["int8"] = {"calib_samples": len(options.calib or []), "feature_method": "KL"}
        dest = Path(out_dir) / f"{stem}.mnn"
        timeout = runner_timeout(model)
        if mode == "full":
            quantize_full(model, dest, list(options.calib or []), timeout=timeout)
        else:
            convert_onnx(model, dest, precision=options.precision, int8_mode=mode, timeout=timeout)
        return Artifact(self.name, dest, [dest], options.precision, meta)

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> MnnRunner:
        return MnnRunner(artifact, threads=threads)

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        return super().artifact_inputs(artifact) or read_net(artifact.main).inputs

    def probe_artifact(self, artifact: Artifact, names: list[str], workdir: Path) -> tuple[Artifact, dict]:
        """The same file; its runner asks MNN for those ONNX-named tensors the model kept."""
        meta = {**artifact.meta, "probe_outputs": list(names)}
        return Artifact(artifact.target, artifact.main, list(artifact.files), artifact.precision, meta), {}

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        path = Path(path)
        if path.suffix.lower() != ".mnn" or not path.is_file():
            return None
        net = read_net(path)  # InputError when it is not an MNN model after all
        if not net.inputs:
            raise InputError(f"{path}: this MNN model declares no inputs; rebuild it with `mconv build`")
        return Artifact(cls.name, path, [path], net.precision, {"int8_mode": net.int8_mode})
