"""The OpenVINO target: conversion, INT8, and the IR's format, through the registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import onnx

from mconv.errors import (
    InputError,
)
from mconv.graphinfo import TensorInfo
from mconv.targets.base import Artifact, BuildOptions, Target
from mconv.targets.openvino.convert import (
    OpenVinoOptions,
    apply_shapes,
    canonicalize_names,
    check_options,
    convert_onnx,
    import_openvino,
    int8_model_type,
    int8_preset,
    int8_warnings,
    onnx_names,
    port_info,
    quantize_int8,
    save_ir,
)
from mconv.targets.openvino.files import ir_inputs, ir_precision, xml_root_tag
from mconv.targets.openvino.runner import OpenVinoRunner


class OpenVinoTarget(Target):
    """OpenVINO IR via ``openvino.convert_model``/``save_model``, INT8 via ``nncf``."""

    name: ClassVar[str] = "openvino"
    # The registry already maps "ov" -> "openvino"; declaring it again would be a duplicate.
    aliases: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "openvino"
    runtime_modules: ClassVar[tuple[str, ...]] = ("openvino",)
    description: ClassVar[str] = "OpenVINO IR (.xml + .bin); FP32, FP16 weights, INT8 via NNCF"
    artifact_kind: ClassVar[str] = "OpenVINO .xml (+ .bin)"
    runtime_packages: ClassVar[tuple[str, ...]] = ("openvino", "nncf")

    Options = OpenVinoOptions

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        check_options(dataclasses.replace(options, target=self.options_of(options)))
        return []  # the pipeline reports calibration-set warnings for every target

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        options = dataclasses.replace(options, target=self.options_of(options))
        check_options(options)
        warnings = int8_warnings(options)
        ov = import_openvino()
        ov_model = convert_onnx(model)
        apply_shapes(ov_model, options.input_shapes, options.batch)
        meta: dict[str, Any] = {}
        if options.precision == "int8":
            ov_model = quantize_int8(ov_model, model, options)
            model_type = int8_model_type(model, options)
            meta["int8"] = {
                "calib_samples": len(options.calib or []),
                "model_type": model_type,
                "preset": int8_preset(model_type, options),
                "ignore": list(options.target.ignore),
            }
        onnx_outputs = [o.name for o in model.graph.output]
        # Keep exactly the ONNX output names on the IR's outputs.
        # (The frontend keeps ONNX output order; an output it dropped leaves the rest unnamed.)
        for port, name in zip(ov_model.outputs, onnx_outputs, strict=False):
            if name not in port.get_names():
                port.get_tensor().add_names({name})
        canonicalize_names(ov_model, onnx_names(model))
        xml, bin_ = save_ir(ov_model, Path(out_dir), stem, compress_to_fp16=options.precision == "fp16")
        meta.update(
            {
                "inputs": [port_info(p) for p in ov_model.inputs],
                "outputs": [port_info(p) for p in ov_model.outputs],
                "input_names": [p.get_any_name() for p in ov_model.inputs],
                "output_names": onnx_outputs,
                "dynamic": any(p.get_partial_shape().is_dynamic for p in ov_model.inputs),
                "openvino_version": ov.get_version(),
                "warnings": warnings,
            }
        )
        return Artifact(self.name, xml, [xml, bin_], options.precision, meta)

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> OpenVinoRunner:
        return OpenVinoRunner(artifact, threads=threads)

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        return super().artifact_inputs(artifact) or ir_inputs(artifact.main)

    def probe_artifact(self, artifact: Artifact, names: list[str], workdir: Path) -> tuple[Artifact, dict]:
        """The same IR; its runner adds the ports that keep ONNX tensor names as results."""
        meta = {**artifact.meta, "probe_outputs": list(names)}
        return Artifact(artifact.target, artifact.main, list(artifact.files), artifact.precision, meta), {}

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        path = Path(path)
        if path.suffix.lower() != ".xml" or not path.is_file() or xml_root_tag(path) != "net":
            return None
        bin_ = path.with_suffix(".bin")
        if not bin_.is_file():
            raise InputError(f"{path}: OpenVINO IR without its weights file {bin_.name}; copy {bin_} beside the .xml")
        return Artifact(cls.name, path, [path, bin_], ir_precision(path), {})
