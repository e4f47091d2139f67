"""Which Caffe layers the reader converts, and why the others are refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mconv.errors import UnsupportedOpsError

if TYPE_CHECKING:
    from pathlib import Path

    from mconv.convert.caffe.netdef import Layer

SUPPORTED = frozenset(
    {
        "Input", "Convolution", "Deconvolution", "BatchNorm", "Scale", "ReLU", "PReLU", "ELU", "Sigmoid",
        "TanH", "AbsVal", "Power", "Pooling", "InnerProduct", "Concat", "Eltwise", "Softmax", "Flatten",
        "Reshape", "Permute", "Dropout", "Slice", "Split", "Interp", "Upsample", "Normalize", "LRN", "PriorBox",
        "Crop", "ReLU6", "ShuffleChannel", "DepthwiseConvolution", "ConvolutionDepthwise",
    }
)  # fmt: skip

# Forks' depthwise convolution types: Convolution's params (group = channels), their own kernels.
CONVOLUTIONS = ("Convolution", "Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise")

# V1 ``layers { type: ENUM }`` -> the new-style type string.
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}  # fmt: skip

_DATA = "a training data layer: convert the deploy prototxt, whose inputs are Input layers or input: fields"
_LOSS = "a training loss/metric layer: convert the deploy prototxt"
REASONS = {
    "DetectionOutput": "SSD box decoding with per-class NMS and a variable-size output is not mapped to ONNX; "
    "remove it from the prototxt (its inputs, e.g. mbox_loc, mbox_conf_flatten and mbox_priorbox, become the "
    "outputs) and decode outside",
    "Python": "runs Python code that is not part of the model files",
    **dict.fromkeys(["Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData"], _DATA),
    **dict.fromkeys(
        [
            "SoftmaxWithLoss",
            "EuclideanLoss",
            "HingeLoss",
            "InfogainLoss",
            "MultinomialLogisticLoss",
            "SigmoidCrossEntropyLoss",
            "ContrastiveLoss",
            "MultiBoxLoss",
            "Accuracy",
            "Silence",
            "HDF5Output",
        ],
        _LOSS,
    ),
}


def _conditional_reason(layer: Layer) -> str | None:
    """Supported types whose particular settings are not (yet) mapped."""
    p = layer.param
    bn = p.batch_norm_param if layer.type == "BatchNorm" else None
    if bn is not None and bn.HasField("use_global_stats") and not bn.use_global_stats:
        return "use_global_stats: false normalises with each batch's own statistics (a training setting)"
    if layer.type == "Pooling" and p.pooling_param.pool == 2:
        return "STOCHASTIC pooling is not mapped"
    if layer.type in CONVOLUTIONS and p.convolution_param.axis != 1:
        return "convolution over an axis other than 1 is not mapped"
    if layer.type == "Upsample" and len(layer.bottoms) != 1:
        return "the two-input (SegNet max-unpooling) Upsample is not mapped; only nearest upsampling by scale"
    if layer.type == "Interp" and (p.interp_param.pad_beg or p.interp_param.pad_end or len(layer.bottoms) != 1):
        return "Interp with pad_beg/pad_end or a second (size) bottom is not mapped"
    if layer.type == "Upsample" and (p.upsample_param.upsample_h or p.upsample_param.upsample_w):
        return "Upsample to an explicit upsample_h/upsample_w size is not mapped; only integer scale factors"
    if layer.type == "LRN" and p.lrn_param.norm_region != 0:
        return "WITHIN_CHANNEL LRN is not mapped (ONNX LRN normalises across channels)"
    return None


def reason(layer: Layer) -> str | None:
    """Why ``layer`` cannot be converted, or None when it can."""
    if layer.type not in SUPPORTED:
        return REASONS.get(layer.type, "this layer type is not mapped to ONNX")
    return _conditional_reason(layer)


class UnsupportedLayersError(UnsupportedOpsError):
    """Caffe layers the reader cannot convert; ``ops`` maps layer type to layer names (exit 1)."""

    def __init__(self, prototxt: Path, found: dict[str, tuple[str, list[str]]]) -> None:
        self.target = "caffe"
        self.ops = {t: names for t, (_, names) in found.items()}
        parts = []
        for t, (why, names) in sorted(found.items()):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{t} x{len(names)} ({shown}): {why}")
        super(UnsupportedOpsError, self).__init__(
            f"{prototxt}: {len(found)} Caffe layer type(s) cannot be converted: " + "; ".join(parts)
            + ". Nothing was written."
        )  # fmt: skip


def check_supported(prototxt: Path, layers: list[Layer]) -> None:
    """Raise UnsupportedLayersError listing every layer that cannot be converted."""
    found: dict[str, tuple[str, list[str]]] = {}
    for layer in layers:
        why = reason(layer)
        if why is not None:
            found.setdefault(layer.type, (why, []))[1].append(layer.name)
    if found:
        raise UnsupportedLayersError(prototxt, found)
