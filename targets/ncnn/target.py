"""The ncnn target: ONNX -> ``.param``/``.bin`` written in pure Python."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import onnx

from mconv.errors import ConversionError, InputError, UnsupportedOpsError
from mconv.graphinfo import TensorInfo
from mconv.targets.base import Artifact, BuildOptions, Runner, Target, TargetOptions, ignore_option, option

MAGIC = b"7767517"
# write() consumes models with at least this many bytes of large initializers (it
# may: see Target.write); smaller ones are read eagerly and left as they were.
CONSUME_MIN_BYTES = 256 << 20


@dataclass
class NcnnOptions(TargetOptions):
    calib_method: str = option(
        "kl",
        help="How activation scales are fitted: kl (ncnn's KL-divergence) or minmax (absolute maximum).",
        choices=("kl", "minmax"),
        precisions=("int8",),
        flag="--calib-method",
        metavar="METHOD",
    )
    shape_hints: bool = option(
        True,
        help="Record the build's output shape of each 3x3 stride-1 Convolution in the .param "
        "(ncnn's shape hints): ncnn's x86 CPU then picks the Winograd variant for that size. "
        "On Vulkan the hints fix the input size; false for a model run at other sizes there.",
    )
    ignore: list[str] = ignore_option()


class NcnnTarget(Target):
    """ncnn writer: rule table in ``rules_*.py``, runner via the ncnn wheel."""

    name: ClassVar[str] = "ncnn"
    extra: ClassVar[str] = "ncnn"
    runtime_modules: ClassVar[tuple[str, ...]] = ("ncnn",)
    description: ClassVar[str] = "Tencent ncnn .param/.bin (pure-Python writer; fp32, fp16, int8)"
    isolate: ClassVar[bool] = True
    artifact_kind: ClassVar[str] = "ncnn .param (+ .bin)"
    batchless: ClassVar[bool] = True  # ncnn Mats have no batch axis
    runtime_packages: ClassVar[tuple[str, ...]] = ("ncnn",)
    Options = NcnnOptions

    def supported_ops(self) -> set[str]:
        from mconv.targets.ncnn.writer import supported_ops

        return supported_ops() | {"Constant"}

    def unsupported(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        """Nodes left after constant folding that no rule lowers (large weights are not read)."""
        from mconv.targets.ncnn.fold import fold_graph

        try:
            prep = fold_graph(model, mode="lazy")
        except Exception:
            return super().unsupported(model)
        ops = self.supported_ops()
        out: dict[str, list[str]] = {}
        for i, n in enumerate(prep.nodes):
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            name = n.name or f"{n.op_type}_{i}"
            if n.output and n.output[0] in prep.too_big:
                from mconv.limits import human

                size = prep.too_big[n.output[0]]
                what = "of unbounded size" if size is None else f"of {human(size)}"
                out.setdefault(key, []).append(
                    f"{name} (constant output {what} above the fold limit {human(prep.fold_limit)}; "
                    "raise it with --fold-limit if the model really needs it)"
                )
            elif key not in ops:
                out.setdefault(key, []).append(name)
        return out

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        """Lower in memory: raises UnsupportedOpsError / ConversionError on blockers.

        A dry run: large weights are neither copied nor kept, the model stays as it was.
        """
        from mconv.targets.ncnn.writer import lower_model

        lowered = lower_model(model, input_shapes=options.input_shapes, mode="dry", precision=options.precision)
        warnings = []
        if lowered.meta.get("dyn_batch_inputs"):
            warnings.append(
                "ncnn has no batch axis: dynamic batch of "
                + ", ".join(lowered.meta["dyn_batch_inputs"])
                + " fixed to 1"
            )
        return warnings

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        from mconv.fsutil import write_text_atomic
        from mconv.targets.ncnn.writer import lower_model, write_files

        out_dir = Path(out_dir)
        options = dataclasses.replace(options, target=self.options_of(options))
        if options.precision not in self.precisions:
            raise UnsupportedOpsError("ncnn", {f"precision {options.precision}": []})
        scratch = None
        if _lazy_bytes(model) >= CONSUME_MIN_BYTES:
            # Large model: read each weight once, clear it from the model, keep the
            # lowered weights in a scratch file beside the output (see writer.py).
            from mconv.targets.ncnn.fold import Scratch

            out_dir.mkdir(parents=True, exist_ok=True)
            scratch = Scratch(out_dir)
        try:
            lowered = lower_model(
                model,
                input_shapes=options.input_shapes,
                mode="consume" if scratch is not None else "eager",
                scratch=scratch,
                precision=options.precision,
            )
            files: list[Path] = []
            warnings: list[str] = []
            if options.precision == "fp16":
                from mconv.targets.ncnn.quantize import to_fp16

                to_fp16(lowered.graph, scratch)
            elif options.precision == "int8":
                from mconv.targets.ncnn.quantize import float_layers_note, quantize_int8

                table = quantize_int8(lowered, model, options)
                note = float_layers_note(lowered.graph)
                warnings += [note] if note else []
                tpath = out_dir / f"{stem}.table"
                out_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(tpath, table)
                files.append(tpath)
            if options.target.shape_hints:
                lowered.graph.add_shape_hints()
            param, binf = write_files(lowered, out_dir, stem)
        finally:
            if scratch is not None:
                scratch.close()
        meta = dict(lowered.meta)
        meta["precision"] = options.precision
        side = out_dir / f"{stem}.mconv.json"
        write_text_atomic(side, json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if warnings:  # shown by the pipeline, not part of the sidecar
            meta = {**meta, "warnings": warnings}
        return Artifact("ncnn", param, [param, binf, side, *files], options.precision, meta)

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> Runner:
        from mconv.targets.ncnn.runner import NcnnRunner

        return NcnnRunner(artifact, threads=threads)

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        from mconv.targets.ncnn.param import param_inputs

        return super().artifact_inputs(artifact) or param_inputs(artifact.main.read_text(errors="replace"))

    def artifact_summary(self, artifact: Artifact) -> dict:
        """The layer types of the .param file and how many of each (``layers``)."""
        from collections import Counter

        from mconv.targets.ncnn.param import read_param

        layers = Counter(layer.type for layer in read_param(artifact.main.read_text(errors="replace")))
        return {"layers": dict(layers.most_common())}

    def probe_artifact(self, artifact: Artifact, names: list[str], workdir: Path) -> tuple[Artifact, dict]:
        """The same files; the runner extracts the blobs the writer mapped from those ONNX names."""
        blobs = artifact.meta.get("blobs") if isinstance(artifact.meta, dict) else None
        if not blobs:
            raise ConversionError(
                f"{artifact.main}: --locate is not supported for this ncnn artifact: it has no ONNX-name to "
                "blob map (the .mconv.json written beside it by `mconv build` is missing)"
            )
        meta = {**artifact.meta, "outputs": [{"name": n, "blob": blobs[n]} for n in names if blobs.get(n)]}
        return Artifact(artifact.target, artifact.main, list(artifact.files), artifact.precision, meta), {}

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        """A ``.param`` whose first line is the ncnn magic 7767517 (any file name).

        Raises:
            InputError: the ``.bin`` beside it is missing.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            return None
        if head.split(b"\n", 1)[0].strip() != MAGIC:
            return None
        binf = path.with_suffix(".bin")
        if not binf.is_file():
            raise InputError(f"{path}: an ncnn .param needs its weights beside it, but {binf} does not exist")
        meta: dict = {}
        side = path.with_suffix(".mconv.json")
        files = [path, binf]
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
                files.append(side)
            except ValueError:
                meta = {}
        return Artifact("ncnn", path, files, meta.get("precision", "fp32"), meta)


def _lazy_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers that are read lazily (dims only: no data is touched)."""
    from mconv.modelio import tensor_nbytes
    from mconv.targets.ncnn.fold import LAZY_BYTES

    total = 0
    for t in model.graph.initializer:
        n = tensor_nbytes(t)
        if n >= LAZY_BYTES:
            total += n
    return total
