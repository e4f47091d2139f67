"""Generated Caffe test nets: a prototxt and a ``.caffemodel`` with seeded random weights each.

Run ``python tests/convert/caffe_nets.py OUT_DIR`` to write them all; the tests call
:func:`write`. The caffemodel is encoded here with a few lines of protobuf wire format and
Caffe's field numbers written out (NetParameter.layer = 100, LayerParameter.blobs = 7, ...),
not with the reader's schema, so a wrong field number in the reader cannot cancel out.

Each net is a function returning (prototxt text, {layer name: [blob arrays]}, v1) where v1
marks an old ``layers {}`` file (weights stored in V1 layers with the legacy 4-D blob fields).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

# --- protobuf wire format ---------------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(a: np.ndarray, legacy: bool) -> bytes:
    data = _field(5, struct.pack(f"<{a.size}f", *a.astype(np.float32).ravel()))  # BlobProto.data, packed
    if legacy:  # num=1 channels=2 height=3 width=4, padded to 4-D on the left
        dims = (1,) * (4 - a.ndim) + a.shape
        return b"".join(_varint(i << 3) + _varint(d) for i, d in enumerate(dims, start=1)) + data
    shape = _field(1, b"".join(_varint(d) for d in a.shape))  # BlobShape.dim, packed
    return _field(7, shape) + data


V1_CODES = {"CONVOLUTION": 4, "RELU": 18, "POOLING": 17, "INNER_PRODUCT": 14, "SOFTMAX": 20}


def caffemodel_bytes(
    name: str,
    weights: dict[str, list[np.ndarray]],
    types: dict[str, str],
    v1: bool,
    extra: dict[str, bytes] | None = None,
) -> bytes:
    """Every layer, as Caffe saves a net (those without weights carry no blobs); ``extra`` adds
    raw fields to a layer's message."""
    out = _field(1, name.encode())
    for layer in types:
        blobs = weights.get(layer, [])
        if v1:  # V1LayerParameter: name = 4, type = 5 (enum), blobs = 6; NetParameter.layers = 2
            body = _field(4, layer.encode()) + _varint(5 << 3) + _varint(V1_CODES[types[layer]])
            body += b"".join(_field(6, _blob(b, legacy=True)) for b in blobs)
            out += _field(2, body)
        else:  # LayerParameter: name = 1, type = 2, blobs = 7; NetParameter.layer = 100
            body = _field(1, layer.encode()) + _field(2, types[layer].encode())
            body += b"".join(_field(7, _blob(b, legacy=False)) for b in blobs)
            out += _field(100, body + (extra or {}).get(layer, b""))
    return out


# --- the nets ---------------------------------------------------------------------------------


def _rng(seed: int) -> np.random.RandomState:
    return np.random.RandomState(seed)


def _w(r: np.random.RandomState, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (r.randn(*shape) * scale).astype(np.float32)


def _bn(r: np.random.RandomState, c: int, factor: float) -> list[np.ndarray]:
    """Running sums as Caffe stores them: mean * factor, var * factor, [factor]."""
    mean, var = _w(r, c), (r.rand(c) + 0.5).astype(np.float32)
    return [mean * factor, var * factor, np.array([factor], np.float32)]


def lenet():
    r = _rng(1)
    text = """
name: "lenet"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 16 input_dim: 16
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" inner_product_param { num_output: 12 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" include { phase: TRAIN } }
"""
    weights = {
        "conv1": [_w(r, 4, 1, 5, 5), _w(r, 4)],
        "conv2": [_w(r, 6, 4, 3, 1), _w(r, 6)],
        "ip1": [_w(r, 12, 6 * 3 * 3), _w(r, 12)],
        "ip2": [_w(r, 5, 12), _w(r, 5)],
    }
    return text, weights, False


def resblock():
    r = _rng(2)
    text = """
name: "resblock"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 10 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 dilation: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { eps: 0.001 } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: false } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum"
  eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" relu_param { negative_slope: 0.1 } }
layer { name: "gap" type: "Pooling" bottom: "sum" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param { num_output: 4 } }
"""
    weights = {
        "conv1": [_w(r, 8, 3, 3, 3)],
        "bn1": _bn(r, 8, factor=2.5),
        "scale1": [(r.rand(8) + 0.5).astype(np.float32), _w(r, 8)],
        "conv2": [_w(r, 8, 4, 3, 3), _w(r, 8)],
        "bn2": _bn(r, 8, factor=1.0),
        "scale2": [(r.rand(8) + 0.5).astype(np.float32)],
        "fc": [_w(r, 4, 8), _w(r, 4)],
    }
    return text, weights, False


def ceil_pooling():
    """Output sizes where rounding up differs from ONNX's floor, and AVE windows clipped at the edge."""
    text = """
name: "ceil_pooling"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 7 } } }
layer { name: "max_k3s2" type: "Pooling" bottom: "data" top: "max_k3s2" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ave_k3s2p1" type: "Pooling" bottom: "data" top: "ave_k3s2p1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ave_k2s2" type: "Pooling" bottom: "data" top: "ave_k2s2" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "max_k2s2p1" type: "Pooling" bottom: "data" top: "max_k2s2p1"
  pooling_param { pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 } }
layer { name: "ave_floor" type: "Pooling" bottom: "data" top: "ave_floor"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }
layer { name: "gmax" type: "Pooling" bottom: "data" top: "gmax" pooling_param { pool: MAX global_pooling: true } }
"""
    return text, {}, False


def v1_net():
    r = _rng(4)
    text = """
name: "v1_net"
input: "data"
input_dim: 1
input_dim: 2
input_dim: 9
input_dim: 9
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 3 kernel_size: 3 stride: 2 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 1 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 4 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""
    weights = {"conv": [_w(r, 3, 2, 3, 3), _w(r, 3)], "fc": [_w(r, 4, 27), _w(r, 4)]}
    return text, weights, True


def ssd_head():
    """Normalize (both modes), loc/conf heads, Permute + Flatten + Concat, Reshape + Softmax."""
    r = _rng(5)
    head = """
layer {{ name: "{p}_loc" type: "Convolution" bottom: "{b}" top: "{p}_loc" convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 }} }}
layer {{ name: "{p}_loc_perm" type: "Permute" bottom: "{p}_loc" top: "{p}_loc_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{p}_loc_flat" type: "Flatten" bottom: "{p}_loc_perm" top: "{p}_loc_flat" flatten_param {{ axis: 1 }} }}
layer {{ name: "{p}_conf" type: "Convolution" bottom: "{b}" top: "{p}_conf" convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 }} }}
layer {{ name: "{p}_conf_perm" type: "Permute" bottom: "{p}_conf" top: "{p}_conf_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{p}_conf_flat" type: "Flatten" bottom: "{p}_conf_perm" top: "{p}_conf_flat" }}
"""  # fmt: skip
    text = """
name: "ssd_head"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "conv_relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "conv_norm" type: "Normalize" bottom: "conv" top: "conv_norm"
  norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_norm" type: "Normalize" bottom: "pool" top: "pool_norm" norm_param { across_spatial: true } }
"""
    text += head.format(p="a", b="conv_norm") + head.format(p="b", b="pool_norm")
    text += """
layer { name: "mbox_loc" type: "Concat" bottom: "a_loc_flat" bottom: "b_loc_flat" top: "mbox_loc" concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "a_conf_flat" bottom: "b_conf_flat" top: "mbox_conf" concat_param { concat_dim: 1 } }
layer { name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax" softmax_param { axis: 2 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_softmax" top: "conf_flat" }
layer { name: "a_prior" type: "PriorBox" bottom: "conv_norm" bottom: "data" top: "a_prior"
  prior_box_param { min_size: 2 max_size: 4 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "b_prior" type: "PriorBox" bottom: "pool_norm" bottom: "data" top: "b_prior"
  prior_box_param { min_size: 4 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 flip: false clip: true variance: 0.1 step: 2 offset: 0.25 img_size: 8 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "a_prior" bottom: "b_prior" top: "mbox_priorbox" concat_param { axis: 2 } }
"""  # fmt: skip
    weights = {
        "conv": [_w(r, 8, 4, 3, 3), _w(r, 8)],
        "conv_norm": [(r.rand(8) * 20 + 5).astype(np.float32)],
        "pool_norm": [np.array([10.0], np.float32)],
    }
    for p in ("a", "b"):
        weights[f"{p}_loc"] = [_w(r, 8, 8, 3, 3), _w(r, 8)]
        weights[f"{p}_conf"] = [_w(r, 6, 8, 3, 3), _w(r, 6)]
    return text, weights, False


def mixed():
    """Slice / Eltwise PROD+MAX / Concat / Deconvolution / PReLU / Interp / Upsample / Split and friends."""
    r = _rng(6)
    text = """
name: "mixed"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 6 dim: 5 dim: 5 } } }
layer { name: "slice" type: "Slice" bottom: "data" top: "s0" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 2 slice_point: 4 } }
layer { name: "halves" type: "Slice" bottom: "s2" top: "h0" top: "h1" slice_param { slice_dim: 1 } }
layer { name: "prod" type: "Eltwise" bottom: "s0" bottom: "s1" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "prod" bottom: "s2" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "h0" bottom: "h1" bottom: "s1" top: "cat" }
layer { name: "split" type: "Split" bottom: "cat" top: "cat_a" top: "cat_b" }
layer { name: "deconv" type: "Deconvolution" bottom: "cat_a" top: "deconv"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "prelu" type: "PReLU" bottom: "deconv" top: "deconv" }
layer { name: "interp" type: "Interp" bottom: "deconv" top: "interp" interp_param { zoom_factor: 2 } }
layer { name: "shrink" type: "Interp" bottom: "interp" top: "shrink" interp_param { height: 7 width: 5 } }
layer { name: "prelu_shared" type: "PReLU" bottom: "shrink" top: "shrink" prelu_param { channel_shared: true } }
layer { name: "up" type: "Upsample" bottom: "cat_b" top: "up" upsample_param { scale: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "up" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "cat_b" top: "tanh" }
layer { name: "pow" type: "Power" bottom: "tanh" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "lrn" type: "LRN" bottom: "pow" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "scale_by" type: "Scale" bottom: "lrn" bottom: "tanh" top: "scaled" scale_param { axis: 0 } }
layer { name: "flat" type: "Flatten" bottom: "scaled" top: "flat" flatten_param { axis: 2 end_axis: 3 } }
"""  # fmt: skip
    weights = {
        "deconv": [_w(r, 6, 2, 4, 4), _w(r, 4)],
        "prelu": [_w(r, 4)],
        "prelu_shared": [np.array([0.2], np.float32)],
    }
    return text, weights, False


def fork_layers():
    """Layers of the common forks: depthwise convolution types, ReLU6, ShuffleChannel; and BVLC's Crop."""
    r = _rng(7)
    text = """
name: "fork_layers"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 7 dim: 7 } } }
layer { name: "dw" type: "DepthwiseConvolution" bottom: "data" top: "dw" convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "dw_relu" type: "ReLU6" bottom: "dw" top: "dw" }
layer { name: "dw2" type: "ConvolutionDepthwise" bottom: "data" top: "dw2" convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 2 dilation: 2 bias_term: false } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "dw2" top: "shuffle" shuffle_channel_param { group: 2 } }
layer { name: "crop" type: "Crop" bottom: "shuffle" bottom: "dw" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "crop_ch" type: "Crop" bottom: "data" bottom: "dw" top: "crop_ch" crop_param { axis: 1 offset: 0 offset: 2 offset: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "crop_ch" bottom: "dw" top: "sum" }
"""  # fmt: skip
    return text, {"dw": [_w(r, 4, 1, 3, 3, scale=2.0), _w(r, 4)], "dw2": [_w(r, 4, 1, 3, 3)]}, False


def unsupported():
    text = """
name: "ssd_tail"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "prior1" type: "PriorBox" bottom: "conv" bottom: "data" top: "prior1"
  prior_box_param { min_size: 30 aspect_ratio: 2 flip: true variance: 0.1 } }
layer { name: "prior2" type: "PriorBox" bottom: "conv" bottom: "data" top: "prior2" prior_box_param { min_size: 60 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "conv" bottom: "prior1" top: "detection_out"
  detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.45 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" batch_norm_param { use_global_stats: false } }
"""
    return text, {"conv": [np.ones((4, 3, 1, 1), np.float32), np.zeros(4, np.float32)]}, False


NETS = {f.__name__: f for f in (lenet, resblock, ceil_pooling, v1_net, ssd_head, mixed, fork_layers, unsupported)}


def _types(text: str) -> dict[str, str]:
    import re

    return {m.group(1): m.group(2) for m in re.finditer(r'name: "([^"]+)" type: "?([A-Za-z_]+)"?', text)}


def write(name: str, folder: Path) -> tuple[Path, Path, dict[str, list[np.ndarray]]]:
    """Write ``<name>.prototxt`` and ``<name>.caffemodel`` into ``folder``; also return the weights."""
    text, weights, v1 = NETS[name]()
    folder.mkdir(parents=True, exist_ok=True)
    prototxt, caffemodel = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    prototxt.write_text(text)
    caffemodel.write_bytes(caffemodel_bytes(name, weights, _types(text), v1))
    return prototxt, caffemodel, weights


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "caffe_nets")
    for net in NETS:
        print(*write(net, out)[:2])
