"""The ``onnx`` target: an optimized ONNX model; ``--fp16`` gives an FP16 model
with float32 inputs and outputs; ``--int8`` a Q/DQ model from calibration data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from mconv.errors import ConversionError, InputError, UsageError
from mconv.graphinfo import TensorInfo, graph_inputs, inferred_copy, node_label, toposorted, with_outputs
from mconv.modelio import parse_model, save_onnx
from mconv.targets.base import Artifact, BuildOptions, Runner, Target, TargetOptions, ignore_option
from mconv.targets.qdq import calib_method_option


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and arithmetic, float32 at the graph's inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as e:
        raise ConversionError(f"FP16 conversion failed: {type(e).__name__}: {e}") from e


class OnnxRunner(Runner):
    """onnxruntime on the CPU."""

    def load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.artifact.main), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ConversionError(
                f"{self.artifact.main}: onnxruntime cannot load it: {str(e).strip().splitlines()[0][:300]}"
            ) from e

    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def infer_impl(self, feeds):
        outs = self.session.run(None, feeds)
        return dict(zip(self.output_names(), outs))


@dataclass
class OnnxOptions(TargetOptions):
    calib_method: str = calib_method_option("minmax")
    ignore: list[str] = ignore_option()


class OnnxTarget(Target):
    name = "onnx"
    extra = ""
    known_domains = ("ai.onnx.ml", "com.microsoft")
    artifact_kind = "ONNX .onnx"
    description = "optimized ONNX (fp32, fp16 with float32 I/O, int8 Q/DQ) run by onnxruntime"
    Options = OnnxOptions

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        if options.precision == "fp16":
            model = to_fp16(model)
        elif options.precision == "int8":
            if not options.calib:
                raise UsageError("--int8 needs calibration data: add --calib DATA (folder or glob of .npy/.npz/images)")
            from mconv.targets.qdq import quantize_qdq

            model = quantize_qdq(
                model,
                options.calib,
                method=self.options_of(options).calib_method,
                ignore=tuple(self.options_of(options).ignore),
            )
        files = save_onnx(model, out_dir / f"{stem}.onnx", keep=False)  # write() may consume the model
        return Artifact(self.name, files[0], files, options.precision)

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> Runner:
        r = OnnxRunner(artifact, threads=threads)
        r.load()
        return r

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        return super().artifact_inputs(artifact) or graph_inputs(
            onnx.load(str(artifact.main), load_external_data=False)
        )

    def probe_artifact(self, artifact: Artifact, names: list[str], workdir: Path) -> tuple[Artifact, dict]:
        """Every wanted intermediate value becomes a graph output of a copy in ``workdir``."""
        model = onnx.load(str(artifact.main))
        produced: dict[str, tuple[str, str]] = {}
        for i, node in enumerate(toposorted(model.graph)):
            for o in node.output:
                if o:
                    produced.setdefault(o, (node_label(node, i), node.op_type))
        probe = with_outputs(inferred_copy(model), [n for n in names if n in produced])
        files = save_onnx(probe, Path(workdir) / artifact.main.name)
        return Artifact(artifact.target, files[0], files, artifact.precision, dict(artifact.meta)), produced

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        if path.suffix.lower() != ".onnx":
            return None
        m = parse_model(path)
        files = [path]
        data = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        for loc in sorted(data):
            p = path.parent / loc
            if not p.is_file():
                raise InputError(f"{path}: its external data file {loc} is missing")
            files.append(p)
        precision = "fp32"
        ops = {n.op_type for n in m.graph.node}
        if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
            precision = "int8"
        elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
            precision = "fp16"
        return Artifact(cls.name, path, files, precision)
