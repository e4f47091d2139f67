"""The part of Caffe's schema (proto2, package ``caffe``) this reader needs, built at run time.

Field names and numbers are those of BVLC Caffe's ``caffe.proto`` and, for the layers that
only forks define, of the fork that introduced them: SSD (Normalize, Permute, PriorBox,
DetectionOutput), PSPNet (Interp), the YOLO ports (Upsample). The messages live in a private
descriptor pool, so a generated ``caffe_pb2`` imported elsewhere in the process cannot
clash with them.

Prototxt is read with the *net* schema below (text format matches fields by name, so only
the names must be right). ``.caffemodel`` files are read with the *weights* schema: a layer's
name, type and blobs only. Forks numbered their own layer parameters freely (the same
number means another message in another fork), so reading them from the binary would
misparse; the structure comes from the prototxt.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}

ENUMS: dict[str, list[tuple[str, int]]] = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    "EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    "VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)],
    "DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "CodeType": [("CORNER", 1), ("CENTER_SIZE", 2), ("CORNER_SIZE", 3)],
    "V1LayerType": [
        ("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
        ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
        ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12),
        ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29),
        ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17), ("POWER", 26), ("RELU", 18),
        ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36), ("SOFTMAX", 20),
        ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23), ("WINDOW_DATA", 24),
        ("THRESHOLD", 31),
    ],
}  # fmt: skip

# message -> [(field, number, type, repeated, default)]; a type that is not a scalar names a
# message or (when in ENUMS) an enum.
_R = True
MESSAGES: dict[str, list[tuple]] = {
    "BlobShape": [("dim", 1, "int64", _R, None)],
    "BlobProto": [
        ("num", 1, "int64", 0, None),
        ("channels", 2, "int64", 0, None),
        ("height", 3, "int64", 0, None),
        ("width", 4, "int64", 0, None),
        ("data", 5, "float", _R, None),
        ("diff", 6, "float", _R, None),
        ("shape", 7, "BlobShape", 0, None),
        ("double_data", 8, "double", _R, None),
        ("double_diff", 9, "double", _R, None),
    ],
    "FillerParameter": [
        ("type", 1, "string", 0, "constant"),
        ("value", 2, "float", 0, None),
        ("min", 3, "float", 0, None),
        ("max", 4, "float", 0, None),
        ("mean", 5, "float", 0, None),
        ("std", 6, "float", 0, None),
        ("sparse", 7, "int64", 0, None),
        ("variance_norm", 8, "VarianceNorm", 0, None),
    ],
    "NetStateRule": [
        ("phase", 1, "Phase", 0, None),
        ("min_level", 2, "int64", 0, None),
        ("max_level", 3, "int64", 0, None),
        ("stage", 4, "string", _R, None),
        ("not_stage", 5, "string", _R, None),
    ],
    "NetState": [("phase", 1, "Phase", 0, "TEST"), ("level", 2, "int64", 0, None), ("stage", 3, "string", _R, None)],
    "ParamSpec": [
        ("name", 1, "string", 0, None),
        ("share_mode", 2, "DimCheckMode", 0, None),
        ("lr_mult", 3, "float", 0, None),
        ("decay_mult", 4, "float", 0, None),
    ],
    "InputParameter": [("shape", 1, "BlobShape", _R, None)],
    "ConvolutionParameter": [
        ("num_output", 1, "uint64", 0, None),
        ("bias_term", 2, "bool", 0, "true"),
        ("pad", 3, "uint64", _R, None),
        ("kernel_size", 4, "uint64", _R, None),
        ("group", 5, "uint64", 0, "1"),
        ("stride", 6, "uint64", _R, None),
        ("weight_filler", 7, "FillerParameter", 0, None),
        ("bias_filler", 8, "FillerParameter", 0, None),
        ("pad_h", 9, "uint64", 0, None),
        ("pad_w", 10, "uint64", 0, None),
        ("kernel_h", 11, "uint64", 0, None),
        ("kernel_w", 12, "uint64", 0, None),
        ("stride_h", 13, "uint64", 0, None),
        ("stride_w", 14, "uint64", 0, None),
        ("engine", 15, "Engine", 0, None),
        ("axis", 16, "int64", 0, "1"),
        ("force_nd_im2col", 17, "bool", 0, None),
        ("dilation", 18, "uint64", _R, None),
    ],
    "PoolingParameter": [
        ("pool", 1, "PoolMethod", 0, None),
        ("kernel_size", 2, "uint64", _R, None),
        ("stride", 3, "uint64", _R, None),
        ("pad", 4, "uint64", _R, None),
        ("kernel_h", 5, "uint64", 0, None),
        ("kernel_w", 6, "uint64", 0, None),
        ("stride_h", 7, "uint64", 0, None),
        ("stride_w", 8, "uint64", 0, None),
        ("pad_h", 9, "uint64", 0, None),
        ("pad_w", 10, "uint64", 0, None),
        ("engine", 11, "Engine", 0, None),
        ("global_pooling", 12, "bool", 0, None),
        # Forks that let a net choose floor rounding (BVLC always rounds up).
        ("round_mode", 13, "RoundMode", 0, None),
        ("ceil_mode", 1013, "bool", 0, "true"),
    ],
    "InnerProductParameter": [
        ("num_output", 1, "uint64", 0, None),
        ("bias_term", 2, "bool", 0, "true"),
        ("weight_filler", 3, "FillerParameter", 0, None),
        ("bias_filler", 4, "FillerParameter", 0, None),
        ("axis", 5, "int64", 0, "1"),
        ("transpose", 6, "bool", 0, None),
    ],
    "BatchNormParameter": [
        ("use_global_stats", 1, "bool", 0, None),
        ("moving_average_fraction", 2, "float", 0, "0.999"),
        ("eps", 3, "float", 0, "1e-5"),
    ],
    "ScaleParameter": [
        ("axis", 1, "int64", 0, "1"),
        ("num_axes", 2, "int64", 0, "1"),
        ("filler", 3, "FillerParameter", 0, None),
        ("bias_term", 4, "bool", 0, None),
        ("bias_filler", 5, "FillerParameter", 0, None),
    ],
    "ReLUParameter": [("negative_slope", 1, "float", 0, None), ("engine", 2, "Engine", 0, None)],
    "PReLUParameter": [("filler", 1, "FillerParameter", 0, None), ("channel_shared", 2, "bool", 0, None)],
    "EngineParameter": [("engine", 1, "Engine", 0, None)],
    "SoftmaxParameter": [("engine", 1, "Engine", 0, None), ("axis", 2, "int64", 0, "1")],
    "ConcatParameter": [("concat_dim", 1, "uint64", 0, "1"), ("axis", 2, "int64", 0, "1")],
    "EltwiseParameter": [
        ("operation", 1, "EltwiseOp", 0, "SUM"),
        ("coeff", 2, "float", _R, None),
        ("stable_prod_grad", 3, "bool", 0, "true"),
    ],
    "FlattenParameter": [("axis", 1, "int64", 0, "1"), ("end_axis", 2, "int64", 0, "-1")],
    "ReshapeParameter": [
        ("shape", 1, "BlobShape", 0, None),
        ("axis", 2, "int64", 0, None),
        ("num_axes", 3, "int64", 0, "-1"),
    ],
    "PermuteParameter": [("order", 1, "uint32", _R, None)],
    "DropoutParameter": [("dropout_ratio", 1, "float", 0, "0.5"), ("scale_train", 2, "bool", 0, "true")],
    "SliceParameter": [
        ("slice_dim", 1, "uint64", 0, "1"),
        ("slice_point", 2, "uint64", _R, None),
        ("axis", 3, "int64", 0, "1"),
    ],
    "InterpParameter": [
        ("height", 1, "int32", 0, None),
        ("width", 2, "int32", 0, None),
        ("zoom_factor", 3, "int32", 0, "1"),
        ("shrink_factor", 4, "int32", 0, "1"),
        ("pad_beg", 5, "int32", 0, None),
        ("pad_end", 6, "int32", 0, None),
    ],
    "UpsampleParameter": [
        ("scale", 1, "uint32", 0, "2"),
        ("scale_h", 2, "uint32", 0, None),
        ("scale_w", 3, "uint32", 0, None),
        ("pad_out_h", 4, "bool", 0, None),
        ("pad_out_w", 5, "bool", 0, None),
        ("upsample_h", 6, "uint32", 0, None),
        ("upsample_w", 7, "uint32", 0, None),
    ],
    "NormalizeParameter": [
        ("across_spatial", 1, "bool", 0, "true"),
        ("scale_filler", 2, "FillerParameter", 0, None),
        ("channel_shared", 3, "bool", 0, "true"),
        ("eps", 4, "float", 0, "1e-10"),
    ],
    "LRNParameter": [
        ("local_size", 1, "uint32", 0, "5"),
        ("alpha", 2, "float", 0, "1"),
        ("beta", 3, "float", 0, "0.75"),
        ("norm_region", 4, "NormRegion", 0, None),
        ("k", 5, "float", 0, "1"),
        ("engine", 6, "Engine", 0, None),
    ],
    "PowerParameter": [("power", 1, "float", 0, "1"), ("scale", 2, "float", 0, "1"), ("shift", 3, "float", 0, None)],
    "ELUParameter": [("alpha", 1, "float", 0, "1")],
    "CropParameter": [("axis", 1, "int32", 0, "2"), ("offset", 2, "uint32", _R, None)],
    "ShuffleChannelParameter": [("group", 1, "uint32", 0, "1")],
    "PriorBoxParameter": [
        ("min_size", 1, "float", _R, None),
        ("max_size", 2, "float", _R, None),
        ("aspect_ratio", 3, "float", _R, None),
        ("flip", 4, "bool", 0, "true"),
        ("clip", 5, "bool", 0, "false"),
        ("variance", 6, "float", _R, None),
        ("img_size", 7, "uint32", 0, None),
        ("img_h", 8, "uint32", 0, None),
        ("img_w", 9, "uint32", 0, None),
        ("step", 10, "float", 0, None),
        ("step_h", 11, "float", 0, None),
        ("step_w", 12, "float", 0, None),
        ("offset", 13, "float", 0, "0.5"),
    ],
    "LayerParameter": [
        ("name", 1, "string", 0, None),
        ("type", 2, "string", 0, None),
        ("bottom", 3, "string", _R, None),
        ("top", 4, "string", _R, None),
        ("loss_weight", 5, "float", _R, None),
        ("param", 6, "ParamSpec", _R, None),
        ("blobs", 7, "BlobProto", _R, None),
        ("include", 8, "NetStateRule", _R, None),
        ("exclude", 9, "NetStateRule", _R, None),
        ("phase", 10, "Phase", 0, None),
        ("propagate_down", 11, "bool", _R, None),
        ("concat_param", 104, "ConcatParameter", 0, None),
        ("convolution_param", 106, "ConvolutionParameter", 0, None),
        ("dropout_param", 108, "DropoutParameter", 0, None),
        ("eltwise_param", 110, "EltwiseParameter", 0, None),
        ("inner_product_param", 117, "InnerProductParameter", 0, None),
        ("lrn_param", 118, "LRNParameter", 0, None),
        ("pooling_param", 121, "PoolingParameter", 0, None),
        ("power_param", 122, "PowerParameter", 0, None),
        ("relu_param", 123, "ReLUParameter", 0, None),
        ("sigmoid_param", 124, "EngineParameter", 0, None),
        ("softmax_param", 125, "SoftmaxParameter", 0, None),
        ("slice_param", 126, "SliceParameter", 0, None),
        ("tanh_param", 127, "EngineParameter", 0, None),
        ("prelu_param", 131, "PReLUParameter", 0, None),
        ("reshape_param", 133, "ReshapeParameter", 0, None),
        ("flatten_param", 135, "FlattenParameter", 0, None),
        ("batch_norm_param", 139, "BatchNormParameter", 0, None),
        ("elu_param", 140, "ELUParameter", 0, None),
        ("scale_param", 142, "ScaleParameter", 0, None),
        ("crop_param", 144, "CropParameter", 0, None),
        ("shuffle_channel_param", 2164, "ShuffleChannelParameter", 0, None),
        ("input_param", 143, "InputParameter", 0, None),
        ("permute_param", 202, "PermuteParameter", 0, None),
        ("prior_box_param", 203, "PriorBoxParameter", 0, None),
        ("norm_param", 206, "NormalizeParameter", 0, None),
        ("interp_param", 2143, "InterpParameter", 0, None),
        ("upsample_param", 2144, "UpsampleParameter", 0, None),
    ],
    "V1LayerParameter": [
        ("bottom", 2, "string", _R, None),
        ("top", 3, "string", _R, None),
        ("name", 4, "string", 0, None),
        ("type", 5, "V1LayerType", 0, None),
        ("blobs", 6, "BlobProto", _R, None),
        ("blobs_lr", 7, "float", _R, None),
        ("weight_decay", 8, "float", _R, None),
        ("concat_param", 9, "ConcatParameter", 0, None),
        ("convolution_param", 10, "ConvolutionParameter", 0, None),
        ("dropout_param", 12, "DropoutParameter", 0, None),
        ("inner_product_param", 17, "InnerProductParameter", 0, None),
        ("lrn_param", 18, "LRNParameter", 0, None),
        ("pooling_param", 19, "PoolingParameter", 0, None),
        ("power_param", 21, "PowerParameter", 0, None),
        ("eltwise_param", 24, "EltwiseParameter", 0, None),
        ("relu_param", 30, "ReLUParameter", 0, None),
        ("slice_param", 31, "SliceParameter", 0, None),
        ("include", 32, "NetStateRule", _R, None),
        ("exclude", 33, "NetStateRule", _R, None),
        ("loss_weight", 35, "float", _R, None),
        ("tanh_param", 37, "EngineParameter", 0, None),
        ("sigmoid_param", 38, "EngineParameter", 0, None),
        ("softmax_param", 39, "SoftmaxParameter", 0, None),
        ("param", 1001, "string", _R, None),
        ("blob_share_mode", 1002, "DimCheckMode", _R, None),
    ],
    "NetParameter": [
        ("name", 1, "string", 0, None),
        ("layers", 2, "V1LayerParameter", _R, None),
        ("input", 3, "string", _R, None),
        ("input_dim", 4, "int64", _R, None),
        ("force_backward", 5, "bool", 0, None),
        ("state", 6, "NetState", 0, None),
        ("debug_info", 7, "bool", 0, None),
        ("input_shape", 8, "BlobShape", _R, None),
        ("layer", 100, "LayerParameter", _R, None),
    ],
    # The weights schema (see the module docstring).
    # Blob data as raw packed bytes (same wire type as a packed float field): np.frombuffer
    # reads 100M weights at once, where a repeated float field is converted element by element.
    "WeightsBlob": [
        ("num", 1, "int64", 0, None),
        ("channels", 2, "int64", 0, None),
        ("height", 3, "int64", 0, None),
        ("width", 4, "int64", 0, None),
        ("data", 5, "bytes", _R, None),
        ("shape", 7, "BlobShape", 0, None),
        ("double_data", 8, "bytes", _R, None),
    ],
    "WeightsLayer": [
        ("name", 1, "string", 0, None),
        ("type", 2, "string", 0, None),
        ("blobs", 7, "WeightsBlob", _R, None),
    ],
    "WeightsV1Layer": [
        ("name", 4, "string", 0, None),
        ("type", 5, "int32", 0, None),
        ("blobs", 6, "WeightsBlob", _R, None),
    ],
    "WeightsNet": [
        ("name", 1, "string", 0, None),
        ("layers", 2, "WeightsV1Layer", _R, None),
        ("layer", 100, "WeightsLayer", _R, None),
    ],
}


def _field(msg: descriptor_pb2.DescriptorProto, spec: tuple) -> None:
    name, number, type_name, repeated, default = spec
    f = msg.field.add(name=name, number=number)
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name in _TYPES:
        f.type = _TYPES[type_name]
        # Caffe packs its numeric arrays (blob data, shapes); text format reads either way.
        if repeated and type_name != "string" and name in ("dim", "data", "diff", "double_data", "double_diff"):
            f.options.packed = True
    else:
        f.type = _F.TYPE_ENUM if type_name in ENUMS else _F.TYPE_MESSAGE
        # Enum values are scoped like C++ ones (package-wide), so each enum sits in a holder
        # message of its own: PoolMethod's MAX and EltwiseOp's MAX would clash otherwise.
        f.type_name = f".caffe.{type_name}Enum.{type_name}" if type_name in ENUMS else f".caffe.{type_name}"
    if default is not None:
        f.default_value = default


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The schema as a ``FileDescriptorProto`` (proto2, package ``caffe``)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="mconv_caffe.proto", package="caffe", syntax="proto2")
    for name, values in ENUMS.items():
        enum = fdp.message_type.add(name=f"{name}Enum").enum_type.add(name=name)
        for value, number in values:
            enum.value.add(name=value, number=number)
    for name, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for spec in fields:
            _field(msg, spec)
    return fdp


@functools.cache
def messages() -> dict[str, Any]:
    """Message classes by short name (``NetParameter``, ``WeightsNet``, ...)."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in MESSAGES}


def v1_type_names() -> dict[int, str]:
    """V1 ``layers`` enum number -> V1 enum name (``CONVOLUTION``...)."""
    return {number: name for name, number in ENUMS["V1LayerType"]}
