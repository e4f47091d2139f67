"""A numpy forward pass of a Caffe net, written from Caffe's layer definitions.

It is the framework-side reference for export verification (Caffe itself does not install
here): it walks the net and its blobs in place, as Caffe does, and shares nothing with the
ONNX mapping but the parsing of the files and of the layers' geometry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mconv.convert.caffe import geometry as geo
from mconv.convert.caffe.netdef import Layer, Net, blob
from mconv.errors import InputError

Forward = Callable[[Net, Layer, list[np.ndarray]], list[np.ndarray]]


def _windows(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]) -> np.ndarray:
    """(N, C, OH, OW, kh, kw) views of the (already padded) input."""
    span = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    v = sliding_window_view(x, span, axis=(2, 3))
    return v[:, :, :: s[0], :: s[1], :: d[0], :: d[1]]


def _conv(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    p, win, x = layer.param.convolution_param, geo.conv_window(layer), xs[0]
    group, out_c, c = int(p.group), int(p.num_output), x.shape[1]
    w = blob(net, layer, 0, (out_c, c // group, *win.kernel))
    xp = np.pad(x, ((0, 0), (0, 0), (win.pad[0],) * 2, (win.pad[1],) * 2))
    cols = _windows(xp, win.kernel, win.stride, win.dilation)
    ci, co = c // group, out_c // group
    parts = [
        np.einsum("nchwij,ocij->nohw", cols[:, g * ci : (g + 1) * ci], w[g * co : (g + 1) * co], optimize=True)
        for g in range(group)
    ]
    y = np.concatenate(parts, axis=1)
    if p.bias_term:
        y = y + blob(net, layer, 1, (out_c,)).reshape(1, -1, 1, 1)
    return [y.astype(np.float32)]


def _deconv(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Caffe's Deconvolution is the convolution's backward pass: scatter each input pixel's kernel."""
    p, win, x = layer.param.convolution_param, geo.conv_window(layer), xs[0]
    group, out_c, (n, c, h, w_) = int(p.group), int(p.num_output), x.shape
    wt = blob(net, layer, 0, (c, out_c // group, *win.kernel))
    (kh, kw), (sh, sw), (dh, dw) = win.kernel, win.stride, win.dilation
    full = np.zeros((n, out_c, sh * (h - 1) + dh * (kh - 1) + 1, sw * (w_ - 1) + dw * (kw - 1) + 1), np.float64)
    ci, co = c // group, out_c // group
    for g in range(group):
        xg, wg = x[:, g * ci : (g + 1) * ci], wt[g * ci : (g + 1) * ci]
        for i in range(kh):
            for j in range(kw):
                contrib = np.einsum("nchw,co->nohw", xg, wg[:, :, i, j])
                full[
                    :,
                    g * co : (g + 1) * co,
                    i * dh : i * dh + sh * (h - 1) + 1 : sh,
                    j * dw : j * dw + sw * (w_ - 1) + 1 : sw,
                ] += contrib
    ph, pw = win.pad
    y = full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw]
    if p.bias_term:
        y = y + blob(net, layer, 1, (out_c,)).reshape(1, -1, 1, 1)
    return [y.astype(np.float32)]


def _pool(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Caffe's loops: each window clipped to the input; AVE divides by its extent inside input + pad."""
    x = xs[0]
    n, c, h, w = x.shape
    win, ave = geo.pool_window(layer, (h, w)), layer.param.pooling_param.pool == 1
    (kh, kw), (sh, sw), (ph, pw) = win.kernel, win.stride, win.pad
    ceil = geo.pool_ceil(layer)
    oh, ow = geo.pool_out(h, kh, sh, ph, ceil), geo.pool_out(w, kw, sw, pw, ceil)
    if layer.param.pooling_param.global_pooling:
        oh = ow = 1
    y = np.empty((n, c, oh, ow), np.float32)
    for i in range(oh):
        h0, h1 = i * sh - ph, min(i * sh - ph + kh, h + ph)
        for j in range(ow):
            w0, w1 = j * sw - pw, min(j * sw - pw + kw, w + pw)
            size = (h1 - h0) * (w1 - w0)
            region = x[:, :, max(h0, 0) : min(h1, h), max(w0, 0) : min(w1, w)]
            y[:, :, i, j] = region.sum(axis=(2, 3)) / size if ave else region.max(axis=(2, 3))
    return [y]


def _inner_product(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    p, x = layer.param.inner_product_param, xs[0]
    axis, out_n = geo.canonical_axis(int(p.axis), x.ndim), int(p.num_output)
    rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    k = rows.shape[1]
    w = blob(net, layer, 0, (k, out_n)) if p.transpose else blob(net, layer, 0, (out_n, k)).T
    y = rows @ w
    if p.bias_term:
        y = y + blob(net, layer, 1, (out_n,))
    return [y.reshape(*x.shape[:axis], out_n).astype(np.float32)]


def _channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _batch_norm(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    c = x.shape[1]
    factor = float(blob(net, layer, 2, (1,))[0])
    k = 0.0 if factor == 0 else 1.0 / factor
    mean, var = blob(net, layer, 0, (c,)) * k, blob(net, layer, 1, (c,)) * k
    eps = float(layer.param.batch_norm_param.eps)
    return [((x - _channel(mean, x.ndim)) / np.sqrt(_channel(var, x.ndim) + eps)).astype(np.float32)]


def _scale(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    x, two = xs[0], len(xs) > 1
    shape = geo.scale_shape(layer, x.shape, xs[1].shape if two else None)
    factor = xs[1].reshape(shape) if two else blob(net, layer, 0, shape)
    y = x * factor
    if layer.param.scale_param.bias_term:
        y = y + blob(net, layer, 0 if two else 1, shape)
    return [y.astype(np.float32)]


def _prelu(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    x = xs[0]
    count = 1 if layer.param.prelu_param.channel_shared else x.shape[1]
    slope = _channel(blob(net, layer, 0, (count,)), x.ndim)
    return [np.where(x > 0, x, x * slope).astype(np.float32)]


def _relu(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    slope = float(layer.param.relu_param.negative_slope)
    return [(np.maximum(xs[0], 0) + slope * np.minimum(xs[0], 0)).astype(np.float32)]


def _power(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    p = layer.param.power_param
    return [np.power(float(p.shift) + float(p.scale) * xs[0], float(p.power)).astype(np.float32)]


def _eltwise(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    p = layer.param.eltwise_param
    if p.operation == 0:
        return [np.prod(np.stack(xs), axis=0)]
    if p.operation == 2:
        return [np.max(np.stack(xs), axis=0)]
    coeffs = [float(c) for c in p.coeff] or [1.0] * len(xs)
    return [sum(c * x for c, x in zip(coeffs, xs)).astype(np.float32)]


def _softmax(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    axis = geo.canonical_axis(int(layer.param.softmax_param.axis), xs[0].ndim)
    e = np.exp(xs[0] - xs[0].max(axis=axis, keepdims=True))
    return [(e / e.sum(axis=axis, keepdims=True)).astype(np.float32)]


def _slice(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    axis, sizes = geo.slice_sizes(layer, xs[0].shape)
    return np.split(xs[0], np.cumsum(sizes)[:-1], axis=axis)


def _interp(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    """Bilinear with corners aligned, as PSPNet's caffe_cpu_interp2."""
    x = xs[0]
    h, w = x.shape[2:]
    oh, ow = geo.interp_size(layer, (h, w))

    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        pos = ratio * np.arange(n_out)
        lo = pos.astype(np.int64)
        hi = np.where(lo < n_in - 1, lo + 1, lo)
        return lo, hi, (pos - lo).astype(np.float32)

    (h0, h1, lh), (w0, w1, lw) = axis_weights(h, oh), axis_weights(w, ow)
    lh, lw = lh[:, None], lw[None, :]
    top = x[:, :, h0][:, :, :, w0] * (1 - lw) + x[:, :, h0][:, :, :, w1] * lw
    bottom = x[:, :, h1][:, :, :, w0] * (1 - lw) + x[:, :, h1][:, :, :, w1] * lw
    return [(top * (1 - lh) + bottom * lh).astype(np.float32)]


def _upsample(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    sh, sw = geo.upsample_scale(layer)
    return [np.repeat(np.repeat(xs[0], sh, axis=2), sw, axis=3)]


def _normalize(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    p, x = layer.param.norm_param, xs[0]
    axes = tuple(range(1, x.ndim)) if p.across_spatial else (1,)
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=axes, keepdims=True) + float(p.eps))
    count = 1 if p.channel_shared else x.shape[1]
    return [(x / norm * _channel(blob(net, layer, 0, (count,)), x.ndim)).astype(np.float32)]


def _lrn(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    p, x = layer.param.lrn_param, xs[0]
    size = int(p.local_size)
    pre = (size - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)))
    window = sum(sq[:, i : i + x.shape[1]] for i in range(size))
    scale = float(p.k) + float(p.alpha) / size * window
    return [(x * scale ** -float(p.beta)).astype(np.float32)]


def _crop(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    axis, offsets = geo.crop_window(layer, xs[0].shape, xs[1].shape)
    index = [slice(None)] * axis + [slice(o, o + n) for o, n in zip(offsets, xs[1].shape[axis:])]
    return [xs[0][tuple(index)]]


def _shuffle_channel(net: Net, layer: Layer, xs: list[np.ndarray]) -> list[np.ndarray]:
    n, c, h, w = xs[0].shape
    group = int(layer.param.shuffle_channel_param.group)
    return [xs[0].reshape(n, group, c // group, h, w).swapaxes(1, 2).reshape(n, c, h, w)]


def _simple(fn: Callable[[Layer, np.ndarray], np.ndarray]) -> Forward:
    return lambda net, layer, xs: [np.asarray(fn(layer, xs[0]), dtype=np.float32)]


FORWARD: dict[str, Forward] = {
    "Convolution": _conv, "Deconvolution": _deconv, "Pooling": _pool, "InnerProduct": _inner_product,
    "BatchNorm": _batch_norm, "Scale": _scale, "ReLU": _relu, "PReLU": _prelu, "Power": _power,
    "ELU": _simple(lambda L, x: np.where(x > 0, x, float(L.param.elu_param.alpha) * (np.exp(x) - 1))),
    "Sigmoid": _simple(lambda L, x: 1 / (1 + np.exp(-x))), "TanH": _simple(lambda L, x: np.tanh(x)),
    "AbsVal": _simple(lambda L, x: np.abs(x)),
    "Concat": lambda net, L, xs: [np.concatenate(xs, axis=geo.concat_axis(L, xs[0].ndim))],
    "Eltwise": _eltwise, "Softmax": _softmax,
    "Flatten": _simple(lambda L, x: x.reshape(geo.flatten_target(L, x.shape))),
    "Reshape": _simple(lambda L, x: x.reshape(geo.reshape_target(L, x.shape))),
    "Permute": _simple(lambda L, x: x.transpose(geo.permute_order(L, x.ndim))),
    "Dropout": _simple(lambda L, x: x), "Split": lambda net, L, xs: [xs[0]] * len(L.tops),
    "Slice": _slice, "Interp": _interp, "Upsample": _upsample, "Normalize": _normalize, "LRN": _lrn,
    "PriorBox": lambda net, L, xs: [geo.prior_boxes(L, xs[0].shape[2:], xs[1].shape[2:])],
    "Crop": _crop, "ReLU6": _simple(lambda L, x: np.clip(x, 0, 6)), "ShuffleChannel": _shuffle_channel,
    "DepthwiseConvolution": _conv, "ConvolutionDepthwise": _conv,
}  # fmt: skip


def forward(net: Net, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the net on ``feeds`` (by input blob name); the outputs by blob name."""
    missing = [n for n in net.inputs if n not in feeds]
    if missing:
        raise InputError(f"{net.prototxt}: no data for input(s) {', '.join(missing)} (inputs: {', '.join(net.inputs)})")
    blobs = {n: np.asarray(feeds[n], dtype=np.float32) for n in net.inputs}
    written: set[str] = set()
    for layer in net.layers:
        if layer.type == "Input":
            continue
        missing = [b for b in layer.bottoms if b not in blobs]
        if missing:
            raise InputError(f"{net.prototxt}:{layer.line}: layer '{layer.name}' reads blob '{missing[0]}', which "
                             "no earlier layer or input produces")  # fmt: skip
        outs = FORWARD[layer.type](net, layer, [blobs[b] for b in layer.bottoms])
        blobs.update(zip(layer.tops, outs))
        written.update(layer.tops)
    return {b: blobs[b] for b in net.outputs() if b in written}
