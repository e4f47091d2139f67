"""The own Caffe reader: generated nets (tests/convert/caffe_nets.py) through ``to_onnx`` (run by
onnxruntime) and ``run_reference``, both against expected outputs computed here by a third,
deliberately plain numpy implementation of Caffe's layers (or by hand for tiny cases)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mconv.convert import caffe
from mconv.errors import EXIT_CONVERSION, EXIT_USAGE, InputError, UnsupportedOpsError

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("caffe_nets", HERE / "caffe_nets.py")
nets = importlib.util.module_from_spec(_spec)
sys.modules["caffe_nets"] = nets
_spec.loader.exec_module(nets)

# --- a plain reading of Caffe's layers ----------------------------------------------------------


def conv(x, w, b=None, stride=(1, 1), pad=(0, 0), dil=(1, 1), group=1):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0],) * 2, (pad[1],) * 2))
    y = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        for i in range(oh):
            for j in range(ow):
                r0, c0 = i * stride[0], j * stride[1]
                patch = xp[:, g * cg : (g + 1) * cg, r0 : r0 + dil[0] * (kh - 1) + 1 : dil[0]]
                patch = patch[..., c0 : c0 + dil[1] * (kw - 1) + 1 : dil[1]]
                y[:, g * og : (g + 1) * og, i, j] = np.tensordot(
                    patch, w[g * og : (g + 1) * og], ([1, 2, 3], [1, 2, 3])
                )
    return y + (0 if b is None else b.reshape(1, -1, 1, 1))


def deconv(x, w, b, stride, pad, group):
    """Each input pixel adds its weighted kernel into the output (then the pad is cropped)."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    full = np.zeros((n, og * group, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    cg = c // group
    for ci in range(c):
        g = ci // cg
        for i in range(h):
            for j in range(wd):
                full[:, g * og : (g + 1) * og, i * stride : i * stride + kh, j * stride : j * stride + kw] += (
                    x[:, ci, i, j][:, None, None, None] * w[ci][None]
                )
    return full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad] + b.reshape(1, -1, 1, 1)


def pool(x, k, s, p=(0, 0), ave=False, ceil=True):
    """Caffe's pooling loop: sizes rounded up, last window starting inside input + pad,
    AVE divided by the window's extent inside input + pad."""
    n, c, h, w = x.shape

    def size(n_in, kk, ss, pp):
        o = int(np.ceil((n_in + 2 * pp - kk) / ss)) + 1 if ceil else (n_in + 2 * pp - kk) // ss + 1
        return o - 1 if pp and (o - 1) * ss >= n_in + pp else o

    oh, ow = size(h, k[0], s[0], p[0]), size(w, k[1], s[1], p[1])
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            win = x[:, :, max(hs, 0) : min(he, h), max(ws, 0) : min(we, w)]
            y[:, :, i, j] = win.sum((2, 3)) / ((he - hs) * (we - ws)) if ave else win.max((2, 3))
    return y


def ch(v, ndim=4):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def bn(x, blobs, eps=1e-5):
    mean, var, factor = blobs
    f = 0.0 if factor[0] == 0 else 1 / factor[0]
    return (x - ch(mean * f)) / np.sqrt(ch(var * f) + eps)


def ip(x, w, b):
    return x.reshape(x.shape[0], -1) @ w.T + b


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def l2norm(x, scale, across_spatial):
    axes = (1, 2, 3) if across_spatial else (1,)
    return x / np.sqrt((x**2).sum(axes, keepdims=True) + 1e-10) * ch(scale)


def bilinear_corners(x, oh, ow):
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        fy = i * (h - 1) / (oh - 1) if oh > 1 else 0.0
        y0 = min(int(fy), h - 1)
        y1, ly = min(y0 + 1, h - 1), fy - y0
        for j in range(ow):
            fx = j * (w - 1) / (ow - 1) if ow > 1 else 0.0
            x0 = min(int(fx), w - 1)
            x1, lx = min(x0 + 1, w - 1), fx - x0
            top = x[:, :, y0, x0] * (1 - lx) + x[:, :, y0, x1] * lx
            bot = x[:, :, y1, x0] * (1 - lx) + x[:, :, y1, x1] * lx
            y[:, :, i, j] = top * (1 - ly) + bot * ly
    return y


def lrn(x, size, alpha, beta, k):
    out = np.empty_like(x)
    c = x.shape[1]
    for i in range(c):
        lo, hi = max(0, i - (size - 1) // 2), min(c, i + size // 2 + 1)
        out[:, i] = x[:, i] / (k + alpha / size * (x[:, lo:hi] ** 2).sum(1)) ** beta
    return out


# --- expected outputs of the generated nets --------------------------------------------------


def lenet_expected(x, W):
    y = pool(conv(x, *W["conv1"]), (2, 2), (2, 2))
    y = pool(conv(y, *W["conv2"], pad=(1, 0)), (2, 2), (2, 2))
    y = np.maximum(ip(y, *W["ip1"]), 0)
    return {"prob": softmax(ip(y, *W["ip2"]))}


def resblock_expected(x, W):
    s1, b1 = W["scale1"]
    c1 = np.maximum(bn(conv(x, W["conv1"][0], pad=(1, 1)), W["bn1"]) * ch(s1) + ch(b1), 0)
    c2 = bn(conv(c1, *W["conv2"], pad=(1, 1), group=2), W["bn2"], eps=1e-3) * ch(W["scale2"][0])
    s = c1 - 0.5 * c2
    s = np.where(s > 0, s, 0.1 * s)
    return {"fc": ip(s.mean((2, 3)), *W["fc"])}


def ceil_pooling_expected(x, W):
    return {
        "max_k3s2": pool(x, (3, 3), (2, 2)),
        "ave_k3s2p1": pool(x, (3, 3), (2, 2), (1, 1), ave=True),
        "ave_k2s2": pool(x, (2, 2), (2, 2), ave=True),
        "max_k2s2p1": pool(x, (2, 3), (2, 3), (1, 1)),
        "ave_floor": pool(x, (3, 3), (2, 2), (1, 1), ave=True, ceil=False),
        "gmax": x.max((2, 3), keepdims=True),
    }


def v1_net_expected(x, W):
    y = pool(np.maximum(conv(x, *W["conv"], stride=(2, 2)), 0), (2, 2), (1, 1), ave=True)
    return {"prob": softmax(ip(y, *W["fc"]))}


def priors(feat_hw, img_hw, mins, maxs, ratios, flip, clip, variance, step=None, offset=0.5):
    """SSD's PriorBox loops: per cell, per min size: the square, the sqrt(min*max) square, then
    each new aspect ratio (and its flip)."""
    ars = [1.0]
    for r in ratios:
        if all(abs(r - a) >= 1e-6 for a in ars):
            ars += [r, 1 / r] if flip else [r]
    (fh, fw), (ih, iw) = feat_hw, img_hw
    sh, sw = (step, step) if step else (ih / fh, iw / fw)
    out = []
    for h in range(fh):
        for w in range(fw):
            cx, cy = (w + offset) * sw, (h + offset) * sh
            for k, m in enumerate(mins):
                whs = [(m, m)] + ([(np.sqrt(m * maxs[k]),) * 2] if maxs else [])
                whs += [(m * np.sqrt(a), m / np.sqrt(a)) for a in ars if abs(a - 1) >= 1e-6]
                for bw, bh in whs:
                    out += [(cx - bw / 2) / iw, (cy - bh / 2) / ih, (cx + bw / 2) / iw, (cy + bh / 2) / ih]
    boxes = np.clip(out, 0, 1) if clip else np.array(out)
    return np.stack([boxes, np.resize(variance, boxes.size)])[None]


def ssd_head_expected(x, W):
    c = np.maximum(conv(x, *W["conv"], pad=(1, 1)), 0)
    feats = {"a": l2norm(c, W["conv_norm"][0], False), "b": l2norm(pool(c, (3, 3), (2, 2), (1, 1)), 10.0, True)}
    locs, confs = [], []
    for p, f in feats.items():
        locs.append(conv(f, *W[f"{p}_loc"], pad=(1, 1)).transpose(0, 2, 3, 1).reshape(1, -1))
        confs.append(conv(f, *W[f"{p}_conf"], pad=(1, 1)).transpose(0, 2, 3, 1).reshape(1, -1))
    conf = softmax(np.concatenate(confs, 1).reshape(1, -1, 3), axis=2)
    a = priors((6, 6), (6, 6), [2], [4], [2], True, False, [0.1, 0.1, 0.2, 0.2])
    b = priors((4, 4), (8, 8), [4], [], [2, 3, 2], False, True, [0.1], step=2, offset=0.25)
    out = {"mbox_loc": np.concatenate(locs, 1), "conf_flat": conf.reshape(1, -1)}
    return {**out, "mbox_priorbox": np.concatenate([a, b], 2)}


def mixed_expected(x, W):
    s0, s1, s2 = x[:, 0:2], x[:, 2:4], x[:, 4:6]
    cat = np.concatenate([np.maximum(s0 * s1, s2), s2[:, :1], s2[:, 1:], s1], 1)
    d = deconv(cat, *W["deconv"], stride=2, pad=1, group=2)
    d = np.where(d > 0, d, d * ch(W["prelu"][0]))
    up = bilinear_corners(d, 19, 19)
    shrink = bilinear_corners(up, 7, 5)
    shrink = np.where(shrink > 0, shrink, 0.2 * shrink)
    sig = 1 / (1 + np.exp(-cat.repeat(2, axis=2).repeat(2, axis=3)))
    t = np.tanh(cat)
    scaled = lrn((1 + 0.5 * t) ** 2, 3, 0.5, 0.75, 2.0) * t
    return {"shrink": shrink, "sig": sig, "flat": scaled.reshape(1, 6, 25)}


def fork_layers_expected(x, W):
    dw = np.clip(conv(x, *W["dw"], stride=(2, 2), pad=(1, 1), group=4), 0, 6)  # 4x4
    dw2 = conv(x, W["dw2"][0], pad=(2, 2), dil=(2, 2), group=4)  # 7x7
    shuffle = dw2[:, [0, 2, 1, 3]]
    return {"sum": shuffle[:, :, 1:5, 1:5] + x[:, 0:4, 2:6, 1:5] + dw}


EXPECTED = {
    "lenet": lenet_expected,
    "resblock": resblock_expected,
    "ceil_pooling": ceil_pooling_expected,
    "v1_net": v1_net_expected,
    "ssd_head": ssd_head_expected,
    "mixed": mixed_expected,
    "fork_layers": fork_layers_expected,
}


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.RandomState(seed)
    return {
        i.name: r.randn(*[d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in model.graph.input
    }


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _close(got: dict, want: dict, rtol: float = 1e-4) -> None:
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape, (k, g.shape, w.shape)
        err = np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-6)
        assert err <= rtol, (k, err)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_generated_net_matches_numpy(tmp_path, name):
    prototxt, caffemodel, weights = nets.write(name, tmp_path)
    model = caffe.to_onnx(prototxt, caffemodel)
    onnx.checker.check_model(model, full_check=True)
    feeds = _feeds(model)
    want = EXPECTED[name](next(iter(feeds.values())).astype(np.float64), weights)
    _close(_ort(model, feeds), want)
    _close(caffe.run_reference(prototxt, caffemodel, feeds), want)


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_opsets(tmp_path, opset):
    """Reductions take their axes as an input from opset 18; the model checks and runs either way."""
    prototxt, caffemodel, weights = nets.write("ssd_head", tmp_path)
    model = caffe.to_onnx(prototxt, caffemodel, opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    feeds = _feeds(model)
    _close(_ort(model, feeds), ssd_head_expected(feeds["data"].astype(np.float64), weights))


def test_opset_too_old(tmp_path):
    from mconv.errors import UsageError

    prototxt, caffemodel, _ = nets.write("lenet", tmp_path)
    with pytest.raises(UsageError, match="opset 13 or newer"):
        caffe.to_onnx(prototxt, caffemodel, opset=11)


def _net(tmp_path: Path, text: str, weights: dict | None = None, name: str = "net") -> tuple[Path, Path]:
    prototxt, caffemodel = tmp_path / f"{name}.prototxt", tmp_path / f"{name}.caffemodel"
    prototxt.write_text(text)
    types = nets._types(text)
    caffemodel.write_bytes(nets.caffemodel_bytes(name, weights or {}, types, v1=False))
    return prototxt, caffemodel


def test_ceil_mode_average_pooling_by_hand(tmp_path):
    """4x4 input 0..15, AVE k3 s2 pad 1: 3x3 output; the last window hangs past input + pad, and
    Caffe divides it by its 2x2 extent inside input + pad (ONNX's ceil_mode would not)."""
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
"""
    prototxt, caffemodel = _net(tmp_path, text)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    want = np.array([[10 / 9, 24 / 9, 10 / 6], [51 / 9, 90 / 9, 33 / 6], [25 / 6, 42 / 6, 15 / 4]]).reshape(1, 1, 3, 3)
    _close(_ort(caffe.to_onnx(prototxt, caffemodel), {"data": x}), {"pool": want}, rtol=1e-6)
    _close(caffe.run_reference(prototxt, caffemodel, {"data": x}), {"pool": want}, rtol=1e-6)


def test_batchnorm_zero_scale_factor(tmp_path):
    """A never-updated BatchNorm (factor 0) normalises with mean 0 and variance 0, not NaN."""
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 1 dim: 1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { eps: 0.25 } }
"""
    zeros = np.zeros(2, np.float32)
    prototxt, caffemodel = _net(tmp_path, text, {"bn": [zeros + 3, zeros + 5, np.zeros(1, np.float32)]})
    x = np.array([1.0, -2.0], np.float32).reshape(1, 2, 1, 1)
    model = caffe.to_onnx(prototxt, caffemodel)
    (out,) = model.graph.output
    assert out.name != "data" and model.graph.input[0].name == "data"
    np.testing.assert_allclose(next(iter(_ort(model, {"data": x}).values())), x * 2, rtol=1e-6)


def test_in_place_tops_get_unique_names(tmp_path):
    prototxt, caffemodel, _ = nets.write("resblock", tmp_path)
    model = caffe.to_onnx(prototxt, caffemodel)
    produced = [o for n in model.graph.node for o in n.output]
    assert len(produced) == len(set(produced))
    assert "conv1/conv1" in produced and "conv1/bn1" in produced and "conv1" in produced
    assert [o.name for o in model.graph.output] == ["fc"]


def test_unsupported_layers_are_listed_before_building(tmp_path):
    prototxt, caffemodel, _ = nets.write("unsupported", tmp_path)
    for call in (lambda: caffe.to_onnx(prototxt, caffemodel), lambda: caffe.run_reference(prototxt, caffemodel, {})):
        with pytest.raises(UnsupportedOpsError) as e:
            call()
        msg = str(e.value)
        assert e.value.exit_code == EXIT_CONVERSION and "\n" not in msg
        assert "DetectionOutput x1 (detection_out): SSD box decoding" in msg and "PriorBox" not in msg
        assert "BatchNorm x1 (bn): use_global_stats: false" in msg and "Nothing was written" in msg
        assert e.value.ops == {"DetectionOutput": ["detection_out"], "BatchNorm": ["bn"]}


_CONV = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 3 } }
"""


@pytest.mark.parametrize(
    ("text", "weights", "needles"),
    [
        (_CONV, {"conv": [np.ones((3, 2, 2, 2), np.float32), np.zeros(3, np.float32)]},
         ["net.caffemodel", "layer 'conv' (Convolution) blob 0 holds 24 values", "[3, 2, 3, 3]"]),
        (_CONV, {}, ["net.caffemodel", "layer 'conv' (Convolution) has 0 weight blob(s)"]),
        (_CONV.replace("kernel_size: 3", "kernel_size: 3 kernel_shape: 4"), {},
         ["net.prototxt:3", '"kernel_shape"', "layer 'conv', Convolution", "remove it"]),
        (_CONV.replace("} } }\nlayer", "} }\nlayer", 1), {}, ["net.prototxt", "unbalanced"]),
        (_CONV.replace('bottom: "data"', 'bottom: "nothing"'), {}, ["net.prototxt:3", "reads blob 'nothing'"]),
        ('input: "data"\ninput_dim: 1 input_dim: 3\n' + _CONV.split("\n", 2)[2], {},
         ["net.prototxt", "four input_dim each"]),
        ('layer { name: "x" type: "ReLU" bottom: "a" top: "a" relu_param { negative_slope: "no" } }', {},
         ["net.prototxt:1", "negative_slope"]),
    ],
)  # fmt: skip
def test_malformed_files_are_input_errors(tmp_path, text, weights, needles):
    prototxt, caffemodel = _net(tmp_path, text, weights)
    with pytest.raises(InputError) as e:
        caffe.to_onnx(prototxt, caffemodel)
    msg = str(e.value)
    assert e.value.exit_code == EXIT_USAGE and "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_no_input(tmp_path):
    text = 'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }\n'
    prototxt, caffemodel = _net(tmp_path, text)
    with pytest.raises(InputError, match="declares no input: add an Input layer"):
        caffe.to_onnx(prototxt, caffemodel)


def test_caffemodel_layer_params_of_forks_are_ignored(tmp_path):
    """Weights come by layer name; whatever a fork stored in a layer's other fields (here field 143,
    BVLC's input_param, holding a varint, and 206 holding junk bytes) does not disturb them."""
    prototxt, caffemodel, weights = nets.write("lenet", tmp_path)
    odd = nets._varint(143 << 3) + nets._varint(7) + nets._varint(206 << 3 | 2) + nets._varint(3) + b"\xff\x00\x01"
    types = nets._types(prototxt.read_text())
    caffemodel.write_bytes(nets.caffemodel_bytes("lenet", weights, types, v1=False, extra={"conv1": odd}))
    feeds = {"data": np.random.RandomState(3).randn(1, 1, 16, 16).astype(np.float32)}
    _close(caffe.run_reference(prototxt, caffemodel, feeds), lenet_expected(feeds["data"].astype(np.float64), weights))


def test_damaged_caffemodel(tmp_path):
    prototxt, caffemodel, _ = nets.write("lenet", tmp_path)
    caffemodel.write_bytes(caffemodel.read_bytes()[:-7])
    with pytest.raises(InputError, match=r"lenet\.caffemodel: not a readable \.caffemodel"):
        caffe.to_onnx(prototxt, caffemodel)


def test_missing_feed(tmp_path):
    prototxt, caffemodel, _ = nets.write("lenet", tmp_path)
    with pytest.raises(InputError, match="no data for input"):
        caffe.run_reference(prototxt, caffemodel, {})


def test_detect_by_content(tmp_path):
    prototxt, caffemodel, _ = nets.write("v1_net", tmp_path)
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(caffemodel.read_bytes())
    assert caffe.detect(prototxt) and caffe.detect(caffemodel) and caffe.detect(renamed)
    assert caffe.is_prototxt(prototxt) and not caffe.is_caffemodel(prototxt)
    assert caffe.is_caffemodel(caffemodel) and not caffe.is_prototxt(caffemodel)
    model = caffe.to_onnx(prototxt, caffemodel)
    onnx_file = tmp_path / "m.onnx"
    onnx.save(model, onnx_file)
    text = tmp_path / "notes.txt"
    text.write_text("layers of an onion\nname: x\n")
    empty = tmp_path / "empty.prototxt"
    empty.write_text("")
    for other in (onnx_file, text, empty, tmp_path):
        assert not caffe.detect(other), other


def test_find_pair_by_name(tmp_path):
    prototxt, caffemodel, _ = nets.write("lenet", tmp_path / "a")
    assert caffe.find_pair(prototxt, None) == (prototxt, caffemodel)
    assert caffe.find_pair(caffemodel, None) == (prototxt, caffemodel)
    # Weights given explicitly, in either order of the two halves.
    other = tmp_path / "w.caffemodel"
    other.write_bytes(caffemodel.read_bytes())
    assert caffe.find_pair(prototxt, other) == (prototxt, other)
    assert caffe.find_pair(other, prototxt) == (prototxt, other)
    # deploy.prototxt beside the only .caffemodel, and NAME_deploy.prototxt beside NAME.caffemodel.
    b = tmp_path / "b"
    b.mkdir()
    (b / "deploy.prototxt").write_text(prototxt.read_text())
    (b / "snapshot_iter_100.caffemodel").write_bytes(caffemodel.read_bytes())
    assert caffe.find_pair(b / "deploy.prototxt", None) == (b / "deploy.prototxt", b / "snapshot_iter_100.caffemodel")
    (b / "mobilenet_deploy.prototxt").write_text(prototxt.read_text())
    (b / "mobilenet.caffemodel").write_bytes(caffemodel.read_bytes())
    assert caffe.find_pair(b / "mobilenet_deploy.prototxt", None)[1] == b / "mobilenet.caffemodel"


def test_find_pair_errors(tmp_path):
    prototxt, caffemodel, _ = nets.write("lenet", tmp_path)
    alone = tmp_path / "alone"
    alone.mkdir()
    lonely = alone / "net.prototxt"
    lonely.write_text(prototxt.read_text())
    cases = [
        ((lonely, None), ["net.prototxt", "without weights", "net.caffemodel", "--weights"]),
        ((lonely, tmp_path / "nope.caffemodel"), ["nope.caffemodel", "no such file", "--weights"]),
        ((lonely, prototxt), ["lenet.prototxt", "--weights", "not a .caffemodel"]),
        ((caffemodel, caffemodel), ["lenet.caffemodel", "--weights"]),
    ]
    weights_only = alone / "w.caffemodel"
    weights_only.write_bytes(caffemodel.read_bytes())
    cases.append(((weights_only, None), ["w.caffemodel", "without their net description", "--weights"]))
    for (path, weights), needles in cases:
        with pytest.raises(InputError) as e:
            caffe.find_pair(path, weights)
        assert e.value.exit_code == EXIT_USAGE
        for n in needles:
            assert n in str(e.value), (n, str(e.value))


@pytest.mark.parametrize(
    ("name", "target"),
    [("resblock", "ncnn"), ("ceil_pooling", "ncnn"), ("fork_layers", "ncnn"), ("mixed", "openvino"),
     ("ssd_head", "openvino")],
)  # fmt: skip
def test_onnx_builds_through_the_cli(tmp_path, in_tmp, cli, name, target):
    """The ONNX from a Caffe net is deployable: ``mconv build`` writes the artifact and verifies
    it against onnxruntime (asymmetric pooling pads, Resize, ConvTranspose, Split included)."""
    pytest.importorskip(target)
    prototxt, caffemodel, _ = nets.write(name, tmp_path / "nets")
    model_path = in_tmp / f"{name}.onnx"
    onnx.save(caffe.to_onnx(prototxt, caffemodel), model_path)
    r = cli("build", model_path, "--target", target, "--json")
    assert r.code == 0, r.err
    assert any(Path(a).exists() for a in r.json["artifacts"])


def test_unpacked_blob_data(tmp_path):
    """Blob data written one float per field (not packed) reads the same."""
    import struct

    def field(num: int, payload: bytes) -> bytes:
        return nets._varint(num << 3 | 2) + nets._varint(len(payload)) + payload

    values = (1.5, -2.0, 0.25)
    floats = b"".join(nets._varint(5 << 3 | 5) + struct.pack("<f", v) for v in values)
    blob = field(7, field(1, nets._varint(3))) + floats
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "s" type: "Scale" bottom: "data" top: "s" }
"""
    prototxt, caffemodel = _net(tmp_path, text)
    caffemodel.write_bytes(field(100, field(1, b"s") + field(2, b"Scale") + field(7, blob)))
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(caffe.run_reference(prototxt, caffemodel, {"data": x})["s"], [values])


def test_settings_that_are_not_mapped_are_refused(tmp_path):
    """Supported types with unmapped settings, and a fork's layer whose params the schema does not know."""
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "sto" type: "Pooling" bottom: "data" top: "sto" pooling_param { pool: STOCHASTIC kernel_size: 2 } }
layer { name: "unpool" type: "Upsample" bottom: "data" bottom: "sto" top: "unpool" upsample_param { scale: 2 } }
layer { name: "interp" type: "Interp" bottom: "data" top: "interp" interp_param { zoom_factor: 2 pad_beg: -1 } }
layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { norm_region: WITHIN_CHANNEL } }
layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "rois" top: "roi" roi_pooling_param { pooled_h: 7 } }
layer { name: "py" type: "Python" bottom: "data" top: "py" python_param { module: "m" layer: "L" } }
"""
    prototxt, caffemodel = _net(tmp_path, text)
    with pytest.raises(UnsupportedOpsError) as e:
        caffe.to_onnx(prototxt, caffemodel)
    msg = str(e.value)
    needles = ["Pooling x1 (sto): STOCHASTIC", "Upsample x1 (unpool): the two-input", "Interp x1 (interp)"]
    needles += ["LRN x1 (lrn): WITHIN_CHANNEL", "ROIPooling x1 (roi)", "Python x1 (py): runs Python"]
    for needle in needles:
        assert needle in msg, (needle, msg)
