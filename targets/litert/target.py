"""The LiteRT (TFLite) target: ONNX -> ``.tflite`` written in pure Python."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import onnx

from mconv.errors import InputError, UnsupportedOpsError
from mconv.graphinfo import TensorInfo
from mconv.targets.base import Artifact, BuildOptions, Runner, Target, TargetOptions, option

FILE_IDENTIFIER = b"TFL3"


@dataclass
class LiteRtOptions(TargetOptions):
    io_layout: str = option(
        "nchw",
        help="Layout of 4-D model inputs/outputs: nchw keeps ONNX's (feeds as for onnxruntime); "
        "nhwc is what MediaPipe and most TFLite apps feed images in.",
        choices=("nchw", "nhwc"),
        metavar="LAYOUT",
    )
    int8_io: bool = option(
        False,
        help="INT8 only: the model's inputs and outputs are int8 too (default: float32, with "
        "QUANTIZE/DEQUANTIZE inside the model).",
        precisions=("int8",),
    )
    metadata: str = option(
        "none",
        help="Write TFLite model metadata: image_classifier adds what MediaPipe's ImageClassifier "
        "reads (RGB image input with normalization, labels); implies io_layout=nhwc.",
        choices=("none", "image_classifier"),
        metavar="KIND",
    )
    mean: str = option(
        "0,0,0",
        help="Per-channel mean for the metadata's normalization, in the units of --mean (pixels / 255).",
        metavar="R,G,B",
    )
    std: str = option(
        "1,1,1",
        help="Per-channel std for the metadata's normalization, in the units of --std (pixels / 255).",
        metavar="R,G,B",
    )
    labels: str = option(
        "",
        help="Text file with one class label per line, packed into the model as its labels file.",
        path=True,
        metavar="FILE",
    )


class LiteRtTarget(Target):
    """Own TFLite flatbuffer writer (rules in ``rules_*.py``), runner via ai-edge-litert."""

    name: ClassVar[str] = "litert"
    # The registry maps "tflite" -> "litert" (targets/__init__.py); declaring it here would be a duplicate.
    aliases: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = "litert"
    runtime_modules: ClassVar[tuple[str, ...]] = ("ai_edge_litert.interpreter",)
    description: ClassVar[str] = "LiteRT / TFLite .tflite (pure-Python writer, NHWC inside; fp32, fp16, int8)"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    isolate: ClassVar[bool] = True
    artifact_kind: ClassVar[str] = "LiteRT .tflite"
    runtime_packages: ClassVar[tuple[str, ...]] = ("ai-edge-litert", "tflite", "flatbuffers")
    Options = LiteRtOptions

    def supported_ops(self) -> set[str]:
        from mconv.targets.litert.writer import supported_ops

        return supported_ops()

    def unsupported(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        """Nodes left after constant folding that no rule lowers."""
        from mconv.targets.litert.writer import prepare

        try:
            _, nodes = prepare(model, mode="lazy")
        except Exception:
            return super().unsupported(model)
        ops = self.supported_ops()
        out: dict[str, list[str]] = {}
        for i, n in enumerate(nodes):
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            if key not in ops:
                out.setdefault(key, []).append(n.name or f"{n.op_type}_{i}")
        return out

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        """Lower in memory: raises UnsupportedOpsError / ConversionError on blockers."""
        from mconv.targets.litert.writer import lower_model

        self._check_precision(options)
        lowered = lower_model(model, input_shapes=options.input_shapes, io_layout=self._layout(options))
        if self.options_of(options).metadata != "none":
            from mconv.targets.litert.classifier import classifier_metadata

            classifier_metadata(lowered.meta, self.options_of(options), model.graph.name or "model")
        dyn = lowered.meta.get("dyn_batch_inputs")
        return [f"TFLite tensors are static here: dynamic batch of {', '.join(dyn)} fixed to 1"] if dyn else []

    def _check_precision(self, options: BuildOptions) -> None:
        if options.precision not in self.precisions:
            raise UnsupportedOpsError("litert", {f"precision {options.precision}": []})

    def _layout(self, options: BuildOptions) -> str:
        opts = self.options_of(options)
        return "nhwc" if opts.io_layout == "nhwc" or opts.metadata != "none" else "onnx"

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        from mconv.fsutil import write_bytes_atomic, write_text_atomic
        from mconv.targets.litert.flatbuf import serialise
        from mconv.targets.litert.writer import lower_model, to_fp16

        options = dataclasses.replace(options, target=self.options_of(options))
        self._check_precision(options)
        lowered = lower_model(model, input_shapes=options.input_shapes, io_layout=self._layout(options))
        meta = dict(lowered.meta)
        if options.precision == "fp16":
            meta["fp16_constants"] = to_fp16(lowered.graph)
        elif options.precision == "int8":
            meta["int8"] = _int8(lowered, options)
        meta["precision"] = options.precision
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        main = out_dir / f"{stem}.tflite"
        extra, files = {}, {}
        if options.target.metadata != "none":
            from mconv.targets.litert.classifier import classifier_metadata

            extra, files = classifier_metadata(lowered.meta, options.target, stem)
            meta["metadata"] = {"kind": options.target.metadata, "files": sorted(files)}
        data = serialise(lowered.graph, extra, release=True)
        if files:
            from mconv.targets.litert.metadata import append_files

            data = append_files(bytes(data), files)
        write_bytes_atomic(main, data)
        side = out_dir / f"{stem}.mconv.json"
        write_text_atomic(side, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return Artifact(self.name, main, [main, side], options.precision, meta)

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> Runner:
        from mconv.targets.litert.runner import LiteRtRunner

        return LiteRtRunner(artifact, threads=threads)

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        return super().artifact_inputs(artifact) or tflite_inputs(artifact.main)

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        """A flatbuffer whose file identifier is ``TFL3`` (any file name)."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError:
            return None
        if len(head) < 8 or head[4:8] != FILE_IDENTIFIER:
            return None
        meta: dict = {}
        files = [path]
        side = path.with_suffix(".mconv.json")
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
                files.append(side)
            except ValueError:
                meta = {}
        return Artifact(cls.name, path, files, meta.get("precision", "fp32"), meta)


def _int8(lowered, options: BuildOptions) -> dict:
    """Calibrate the FP32 graph on ``options.calib`` and rewrite it to INT8."""
    from mconv.errors import UsageError
    from mconv.targets.litert.flatbuf import serialise
    from mconv.targets.litert.quantize import calibrate, quantize_int8

    if not options.calib:
        raise UsageError("--int8 for litert needs calibration data: give --calib DIR (images or .npy/.npz)")
    nhwc = {m["name"] for m in lowered.meta["inputs"] if m["layout"] == "nhwc"}
    samples = [{k: v.transpose(0, 2, 3, 1) if k in nhwc else v for k, v in f.items()} for f in options.calib]
    ranges = calibrate(bytes(serialise(lowered.graph)), lowered.graph, samples)
    summary = quantize_int8(lowered.graph, ranges, int8_io=options.target.int8_io)
    return {**summary, "calib_samples": len(samples), "int8_io": options.target.int8_io}


def tflite_inputs(path: Path) -> list[TensorInfo] | None:
    """The subgraph's inputs (name, shape, dtype) read from the flatbuffer.

    Raises:
        InputError: the file is truncated or not a TFLite flatbuffer.
    """
    from mconv.targets.litert.graph import TENSOR_TYPES

    names = {v: k for k, v in TENSOR_TYPES.items()}
    try:
        import tflite

        model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        sub = model.Subgraphs(0)
        out = []
        for k in range(sub.InputsLength()):
            t = sub.Tensors(sub.Inputs(k))
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            out.append(TensorInfo(t.Name().decode(), shape, names.get(t.Type(), "float32")))
    except ImportError:
        return None
    except Exception as e:  # flatbuffers reads past the end of a truncated file
        raise InputError(
            f"{path}: not a readable .tflite file ({type(e).__name__}: {e}); re-build or re-copy it"
        ) from e
    return out
