"""Explicit INT8 quantization: an ONNX model with QuantizeLinear/DequantizeLinear pairs.

onnxruntime's static quantization in QDQ format with per-channel weights. The result
runs in onnxruntime on the CPU (``--target onnx --int8``) and is what TensorRT builds
in INT8 (explicit quantization). TensorRT requires zero points of 0, so both
activations and weights are quantized symmetrically to int8. In graphs with attention
only MatMul, Gemm and Conv inputs are quantized (``TRANSFORMER_QUANTIZED``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from mconv.errors import ConversionError, UsageError
from mconv.graphinfo import attention_blocks, graph_inputs, opset
from mconv.quiet import quiet

Feeds = dict[str, np.ndarray]

# Calibration methods by name; "kl" is the name TensorRT and ncnn users know entropy by.
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "kl": "Entropy", "percentile": "Percentile"}
# Per-channel QuantizeLinear/DequantizeLinear (the ``axis`` attribute) needs opset 13.
MIN_OPSET = 13
# In a graph with attention, only these ops get Q/DQ on their inputs (see quantize_qdq).
TRANSFORMER_QUANTIZED = ("MatMul", "Gemm", "Conv")


class FeedsReader:
    """An onnxruntime CalibrationDataReader over loaded samples (one feed dict each)."""

    def __init__(self, samples: Sequence[Feeds], input_names: Iterable[str]) -> None:
        names = list(input_names)
        self._samples = [{n: np.ascontiguousarray(s[n]) for n in names} for s in samples]
        self._it = iter(self._samples)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._samples)


def calib_method_option(default: str = "minmax"):
    """The ``calib_method`` option of the targets that quantize through Q/DQ."""
    from mconv.targets.options import option

    return option(
        default,
        help="How activation ranges are fitted: minmax, entropy (alias kl) or percentile.",
        choices=tuple(METHODS),
        precisions=("int8",),
        flag="--calib-method",
        metavar="METHOD",
    )


def resolve_method(method: str) -> str:
    key = method.lower()
    if key not in METHODS:
        raise UsageError(f"calibration method '{method}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[key]


def excluded_nodes(model: onnx.ModelProto, ignore: Iterable[str]) -> list[str]:
    """Node names to keep in float: ``ignore`` holds node names or op types."""
    wanted = set(ignore)
    if not wanted:
        return []
    out = [n.name for n in model.graph.node if n.name in wanted or n.op_type in wanted]
    known = {n.name for n in model.graph.node} | {n.op_type for n in model.graph.node}
    unknown = sorted(wanted - known)
    if unknown:
        raise UsageError(
            f"--ignore {unknown}: no node or op type of that name in the model; "
            "give node names or op types such as Softmax"
        )
    return out


def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name every node (exclusion is by name) and lift the opset to 13 for per-channel Q/DQ."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    if opset(model) < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:
            raise ConversionError(
                f"INT8 quantization needs opset >= {MIN_OPSET} for per-channel scales and "
                f"converting from opset {opset(model)} failed ({e}); re-export with --opset 17"
            ) from e
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass  # quantization still works without value_info, only less of it
    return model


def quantize_qdq(
    model: onnx.ModelProto,
    calib: list[Feeds],
    *,
    per_channel: bool = True,
    method: str = "minmax",
    ignore: Iterable[str] = (),
) -> onnx.ModelProto:
    """Return a Q/DQ (explicitly quantized) copy of ``model`` calibrated on ``calib``.

    Args:
        model: a float ONNX model (not modified).
        calib: calibration samples, each a dict input name -> array.
        per_channel: one scale per output channel for weights (TensorRT's default).
        method: ``minmax``, ``entropy`` (alias ``kl``) or ``percentile``.
        ignore: node names or op types left in float.

    Raises:
        UsageError: no calibration data, an unknown method or ignore entry.
        ConversionError: onnxruntime could not quantize the model.
    """
    from onnxruntime.quantization import CalibrationMethod

    if not calib:
        raise UsageError("--int8 needs calibration data: add --calib DATA (a folder of .npy/.npz or images)")
    calibrate_method = getattr(CalibrationMethod, resolve_method(method))
    prepared = _prepare(model)
    names = [i.name for i in graph_inputs(prepared)]
    missing = sorted({n for n in names for s in calib if n not in s})
    if missing:
        raise UsageError(f"--calib: the samples lack input(s) {missing}; the model takes {names}")
    exclude = sorted(set(excluded_nodes(prepared, ignore)) | _softmax_output_nodes(prepared))
    # Transformers: Q/DQ only in front of the weighted ops; the residual Adds, GELU, scale,
    # mask and Softmax stay float. Measured on the bench zoo (16 random calibration
    # samples, cosine to FP32): BERT-base 0.145 with every op quantized, 0.727 with the
    # Softmax float, 0.993 with the score chain (scale, mask, Softmax) float; ViT-B/16
    # 0.966 with the score chain float, 0.959 with the Adds or the GELUs float as well;
    # with only MatMul/Gemm/Conv quantized, ViT-B/16 0.998 and BERT-base 0.999.
    op_types = list(TRANSFORMER_QUANTIZED) if attention_blocks(prepared) else None
    return _quantize_static(
        prepared,
        calib,
        names,
        per_channel=per_channel,
        calibrate_method=calibrate_method,
        nodes_to_exclude=exclude,
        op_types_to_quantize=op_types,
    )


def _quantize_static(prepared: onnx.ModelProto, calib: list[Feeds], names: list[str], **options) -> onnx.ModelProto:
    """Run onnxruntime's ``quantize_static`` in TensorRT's Q/DQ flavour on files in a
    temporary folder (``options``: per_channel, calibrate_method, nodes_to_exclude,
    op_types_to_quantize)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    large = prepared.ByteSize() > 1_900_000_000
    with tempfile.TemporaryDirectory(prefix="mconv-qdq-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save_model(prepared, str(src), save_as_external_data=large)
        try:
            with quiet():
                quantize_static(
                    str(src),
                    str(dst),
                    FeedsReader(calib, names),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    use_external_data_format=large,
                    extra_options={
                        # TensorRT accepts only zero points of 0.
                        "ActivationSymmetric": True,
                        "WeightSymmetric": True,
                        "CalibTensorRangeSymmetric": True,
                        # TensorRT dequantizes INT8 only: an INT32 bias would fail to parse.
                        "QuantizeBias": False,
                    },
                    **options,
                )
        except (UsageError, ConversionError):
            raise
        except Exception as e:
            raise ConversionError(
                f"onnxruntime static quantization failed: {type(e).__name__}: {e}. "
                "Try --calib-method minmax or keep the failing op in float with --ignore OP"
            ) from e
        return onnx.load_model(str(dst), load_external_data=True)


_SHAPE_ONLY = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


def _softmax_output_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of a Softmax feeding a graph output (through shape-only ops) and of those ops.

    They stay float: one int8 scale set by the top probability rounds every small
    probability to zero.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    found: set[str] = set()
    for out in model.graph.output:
        path = []
        node = producer.get(out.name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            path.append(node)
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Softmax":
            found.update(n.name for n in (*path, node) if n.name)
    return found


def qdq_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of Q/DQ nodes and per-channel weight DequantizeLinear nodes."""
    inits = {t.name: t for t in model.graph.initializer}
    per_channel = 0
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            scale = inits.get(n.input[1])
            if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
                per_channel += 1
    return {
        "QuantizeLinear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "DequantizeLinear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        "per_channel_weights": per_channel,
    }
