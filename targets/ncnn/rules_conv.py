"""Convolutions: Conv (1-D, 2-D, 3-D; grouped and depthwise) and ConvTranspose
(1-D, 2-D, grouped; 3-D, ungrouped).

Cases:
    Conv group=1 -> Convolution1D / Convolution / Convolution3D; group>1 ->
    ConvolutionDepthWise1D / ConvolutionDepthWise (7=group). auto_pad SAME_* and
    VALID become explicit pads from the static shapes. ConvTranspose ->
    Deconvolution1D / Deconvolution / DeconvolutionDepthWise / Deconvolution3D with pads as crops,
    output_padding (or the difference to ``output_shape``) as 18/19(/20). Weights
    (tagged) must be constant; the bias (raw) is optional. The activation that
    follows is fused into key 9 later by ``optimize``. A 1x1 convolution of a
    [1, C, 1, 1] vector -> InnerProduct on the 1-D Mat. A batch of N > 1 (windows
    moved into the batch axis) -> one grouped convolution over the N items side by
    side in channels, the weights repeated N times (group N x group).
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable, nc_shape
from mconv.targets.ncnn.registry import rule


def _pads(node: Node, in_sp, k, s, d) -> tuple[list[int], list[int]]:
    """(begin, end) pads per spatial dim, auto_pad resolved."""
    n = len(in_sp)
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            out = -(-in_sp[i] // s[i])
            total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_sp[i], 0)
            small = total // 2
            if auto == "SAME_UPPER":
                begin.append(small)
                end.append(total - small)
            else:
                begin.append(total - small)
                end.append(small)
        return begin, end
    if auto == "VALID":
        return [0] * n, [0] * n
    pads = list(node.attr("pads", [0] * (2 * n)))
    return pads[:n], pads[n:]


def _spatial_attrs(node: Node, w: np.ndarray):
    n = w.ndim - 2
    k = list(node.attr("kernel_shape", list(w.shape[2:])))
    s = list(node.attr("strides", [1] * n))
    d = list(node.attr("dilations", [1] * n))
    return n, k, s, d


@rule("Conv")
def conv(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    w = node.const(1, "weight")
    b = node.const(2, "bias")
    n, k, s, d = _spatial_attrs(node, w)
    group = int(node.attr("group", 1))
    if n not in (1, 2, 3):
        raise NotLowerable(f"{n}-D convolution")
    if n == 3 and group != 1:
        raise NotLowerable("grouped 3-D convolution")
    begin, end = _pads(node, x.shape[2:], k, s, d)
    if group == 1 and x.shape[0] == 1 and all(v == 1 for v in (*x.shape[2:], *k)) and not any(begin + end):
        _pointwise_on_vector(ctx, node, x, w, b)
        return
    # A batch the model makes itself; a batch from a graph input is refused (blob_as).
    batch = int(x.shape[0]) if not ctx.batched_inputs() else 1
    keep = tuple(range(1, x.rank))
    if batch > 1:
        if n == 3 or batch > CONV_BATCH_MAX:
            raise NotLowerable(f"a batch of {batch} {n}-D convolutions (2-D/1-D up to {CONV_BATCH_MAX} convert)")
        xb, w, b, group = _batch_in_channels(ctx, x, w, b, group, batch)
    else:
        xb = ctx.blob_as(x, keep)
    out_c = w.shape[0]
    type_, p = _conv_layer(n, group, out_c, b is not None, int(w.size), (k, s, d, begin, end))
    weights = [Weight(np.asarray(w, np.float32).ravel(), tagged=True)]
    if b is not None:
        weights.append(Weight(np.asarray(b, np.float32).ravel(), tagged=False))
    out_shape = ctx.out_shape()
    if batch > 1:
        blob = ctx.emit(type_, [xb], (out_c, *out_shape[2:]), p, weights)
        full = tuple(range(len(out_shape)))
        ctx.bind(node.outputs[0], ctx.reshape(blob, tuple(out_shape), name_hint=node.outputs[0]), full)
        return
    blob = ctx.emit(type_, [xb], nc_shape(out_shape, keep), p, weights, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], blob, keep)


def _batch_in_channels(ctx: Ctx, x, w, b, group: int, batch: int) -> tuple[str, np.ndarray, np.ndarray | None, int]:
    """Windows (or heads) in the batch axis (EfficientViT-M's cascaded group
    attention): the N items side by side in channels, one grouped convolution
    with the weights repeated per item — group N x group. Returns the input
    blob, the weights, the bias and the group."""
    xb = ctx.reshape(ctx.blob_as(x), (batch * x.shape[1], *x.shape[2:]), name_hint=x.name)
    w = np.tile(np.asarray(w), (batch,) + (1,) * (w.ndim - 1))
    b = None if b is None else np.tile(np.asarray(b), batch)
    return xb, w, b, group * batch


def _conv_layer(n: int, group: int, out_c: int, bias: bool, w_size: int, geometry: tuple) -> tuple[str, dict]:
    """The ncnn convolution layer type and its params for ``geometry`` = (kernel,
    strides, dilations, pads begin, pads end), each listed outermost axis first."""
    k, s, d, begin, end = geometry
    p: dict = {0: out_c, 5: int(bias), 6: w_size}
    if n == 1:
        p.update({1: k[0], 2: d[0], 3: s[0], 4: begin[0], 15: end[0]})
        type_ = "Convolution1D" if group == 1 else "ConvolutionDepthWise1D"
    elif n == 2:
        p.update(
            {
                1: k[1], 11: k[0], 2: d[1], 12: d[0], 3: s[1], 13: s[0],
                4: begin[1], 14: begin[0], 15: end[1], 16: end[0],
            }
        )  # fmt: skip
        type_ = "Convolution" if group == 1 else "ConvolutionDepthWise"
    else:
        p.update(
            {
                1: k[2], 11: k[1], 21: k[0], 2: d[2], 12: d[1], 22: d[0],
                3: s[2], 13: s[1], 23: s[0], 4: begin[2], 14: begin[1], 24: begin[0],
                15: end[2], 16: end[1], 17: end[0],
            }
        )  # fmt: skip
        type_ = "Convolution3D"
    if group != 1:
        p[7] = group
    return type_, p


# Most batch items one convolution takes side by side in channels (weights repeat per item).
CONV_BATCH_MAX = 64


def _pointwise_on_vector(ctx: Ctx, node: Node, x, w: np.ndarray, b: np.ndarray | None) -> None:
    """A 1x1 convolution of a [1, C, 1, 1] tensor (squeeze-excitation, classifier
    heads after global pooling) is a matrix-vector product: InnerProduct on the 1-D
    [C] Mat, which takes the same fused activation and runs without the
    convolution's packing. The result stays a 1-D [O] Mat: ncnn's BinaryOp
    broadcasts it per channel against a (O, H, W) Mat."""
    from mconv.targets.ncnn.lower import Tensor
    from mconv.targets.ncnn.rules_linear import inner_product

    c = x.shape[1]
    vec = Tensor(f"{x.name}_vec", (1, c), x.dtype, blob=ctx.reshape(ctx.blob_as(x), (c,), name_hint=x.name), keep=(1,))
    w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    inner_product(ctx, vec, w2, None if b is None else np.asarray(b, np.float32), node.outputs[0], out_keep=(1,))


@rule("ConvTranspose")
def conv_transpose(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    w = np.asarray(node.const(1, "weight"), np.float32)
    b = node.const(2, "bias")
    n, k, s, d = _spatial_attrs(node, w)
    group = int(node.attr("group", 1))
    if n not in (1, 2, 3):
        raise NotLowerable(f"{n}-D transposed convolution")
    if n != 2 and group != 1:
        raise NotLowerable(f"grouped {n}-D transposed convolution")
    keep = tuple(range(1, x.rank))
    xb = ctx.blob_as(x, keep)
    out_shape = ctx.out_shape()
    begin, end, opad = _deconv_pads(node, n, x.shape[2:], out_shape[2:], (k, s, d))
    cin, cout_g = w.shape[0], w.shape[1]
    cout = cout_g * group
    # ONNX [I, O/g, k...] -> ncnn per group [O/g, I/g, k...].
    wg = w.reshape(group, cin // group, cout_g, *w.shape[2:])
    wg = np.swapaxes(wg, 1, 2)
    p: dict = {0: cout, 5: int(b is not None), 6: int(w.size)}
    if n == 1:
        p.update({1: k[0], 2: d[0], 3: s[0], 4: begin[0], 15: end[0], 18: opad[0]})
        type_ = "Deconvolution1D"
    elif n == 3:
        # ONNX spatial axes are (d, h, w); ncnn keys come w first, then h, then d.
        p.update(
            {
                1: k[2], 11: k[1], 21: k[0], 2: d[2], 12: d[1], 22: d[0], 3: s[2], 13: s[1], 23: s[0],
                4: begin[2], 15: end[2], 14: begin[1], 16: end[1], 24: begin[0], 17: end[0],
                18: opad[2], 19: opad[1], 20: opad[0],
            }
        )  # fmt: skip
        type_ = "Deconvolution3D"
    else:
        p.update(
            {
                1: k[1], 11: k[0], 2: d[1], 12: d[0], 3: s[1], 13: s[0],
                4: begin[1], 14: begin[0], 15: end[1], 16: end[0], 18: opad[1], 19: opad[0],
            }
        )  # fmt: skip
        type_ = "Deconvolution" if group == 1 else "DeconvolutionDepthWise"
        if group != 1:
            p[7] = group
    weights = [Weight(np.ascontiguousarray(wg).ravel(), tagged=True)]
    if b is not None:
        weights.append(Weight(np.asarray(b, np.float32).ravel(), tagged=False))
    blob = ctx.emit(type_, [xb], nc_shape(out_shape, keep), p, weights, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], blob, keep)


def _deconv_pads(node: Node, n: int, in_sp, out_sp, geometry: tuple) -> tuple[list[int], list[int], list[int]]:
    """Pads at the begin and the end of each of the ``n`` spatial axes, and ncnn's
    output padding (the size beyond the crop), for the output size ONNX gives;
    ``geometry`` is (kernel, strides, dilations).

    Raises:
        NotLowerable: a pad or the output padding would be negative.
    """
    k, s, d = geometry
    opad = list(node.attr("output_padding", [0] * n))
    auto = node.attr("auto_pad", "NOTSET")
    begin, end = [], []
    for i in range(n):
        full = s[i] * (in_sp[i] - 1) + (k[i] - 1) * d[i] + 1
        if "pads" in node.attrs and auto == "NOTSET":
            pb, pe = node.attrs["pads"][i], node.attrs["pads"][i + n]
        else:
            total = full + opad[i] - out_sp[i]
            if total < 0:
                pb, pe = 0, 0
            elif auto == "SAME_UPPER":
                # onnxruntime: SAME_UPPER puts the smaller half first, every
                # other mode (NOTSET with output_shape included) the larger.
                pb = total // 2
                pe = total - pb
            else:
                pe = total // 2
                pb = total - pe
        extra = out_sp[i] - (full - pb - pe)
        if extra < 0 or pb < 0 or pe < 0:
            raise NotLowerable("negative padding")
        # ncnn adds output padding at the end before cropping pads; extra
        # size beyond the crop is exactly ONNX's output_padding.
        begin.append(pb)
        end.append(pe)
        opad[i] = extra
    return begin, end, opad


@rule("Col2Im")
def col2im(ctx: Ctx, node: Node) -> None:
    """Col2Im (opset 18; ``torch.nn.functional.fold``, VOLO's outlook attention) -> ncnn
    ``Fold`` on the (C*kh*kw, L) column Mat: ``1/11 kernel 2/12 dilation 3/13 stride
    4/15/14/16 pads (left, right, top, bottom) 20/21 output w/h`` (the unpadded image)."""
    x = node.inputs[0]
    assert x is not None
    if x.const is not None or x.blob is None:
        raise NotLowerable("Col2Im of a constant (fold first)")
    if x.rank != 3 or x.shape[0] != 1:
        raise NotLowerable("Col2Im needs one (1, C*kh*kw, L) batch")
    image = [int(v) for v in np.asarray(node.const(1, "image_shape")).ravel()]
    block = [int(v) for v in np.asarray(node.const(2, "block_shape")).ravel()]
    if len(image) != 2 or len(block) != 2:
        raise NotLowerable("Col2Im over other than two spatial axes")
    (kh, kw), (ih, iw) = block, image
    dh, dw = (int(v) for v in node.attr("dilations", [1, 1]))
    sh, sw = (int(v) for v in node.attr("strides", [1, 1]))
    pt, pl, pb, pr = (int(v) for v in node.attr("pads", [0, 0, 0, 0]))
    cols, length = int(x.shape[1]), int(x.shape[2])
    oh = (ih + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (iw + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if cols % (kh * kw) or oh * ow != length:
        raise NotLowerable("Col2Im block count does not match the image")
    blob = ctx.reshape(ctx.blob_as(x), (cols, length), name_hint=x.name)
    params = {1: kw, 11: kh, 2: dw, 12: dh, 3: sw, 13: sh, 4: pl, 15: pr, 14: pt, 16: pb, 20: iw, 21: ih}
    out = node.outputs[0]
    res = ctx.emit("Fold", [blob], (cols // (kh * kw), ih, iw), params, out_name=out)
    ctx.bind(out, res, (1, 2, 3))
