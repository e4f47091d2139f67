"""Reduced precision: FP16 weight storage and INT8 post-training quantization.

FP16 (:func:`to_fp16`): every *tagged* weight buffer (convolution, InnerProduct,
Gemm, RNN weights) is stored as half floats with ncnn's fp16 tag; raw buffers
(biases, norms, MemoryData) stay float32, as ncnn reads them.

INT8 (:func:`quantize_int8`), ncnn's own scheme reimplemented in Python:
activation scales per tensor for the input blob of every Convolution,
ConvolutionDepthWise and InnerProduct, found by running the FP32 model on the
calibration samples and picking the threshold that minimizes the KL divergence
between the clipped 2048-bin histogram of |x| and its 128-level quantized
version (``calib_method == "minmax"``: the absolute maximum instead);
weight scales per output channel (per group for depthwise), 127/absmax. The
weights are written as int8 (tag 0x000D4B38) followed by the raw weight scales
and the bottom-blob scale, with ``8=int8_scale_term``. The same scales are
returned in ncnn2table's text format for ``<stem>.table``. A Gemm with constant
B gets ncnn's Gemm INT8 (``18=2``): B as int8 with one scale for the matrix; ncnn
quantizes the rows of A at run time (no calibration entry in the table).
MultiHeadAttention likewise (``18=2``): q/k/v weights with a scale per output row,
the output projection with one scale, inputs quantized at run time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from mconv.errors import UsageError
from mconv.targets.base import BuildOptions
from mconv.targets.ncnn.ir import Layer, NcnnGraph, Weight

QUANTIZABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
# Weighted layers that do the heavy arithmetic but stay float in an INT8 build
# (Gemm with constant B and MultiHeadAttention are quantized: _apply_gemm, _apply_mha).
_FLOAT_HEAVY = (
    "Deconvolution",
    "DeconvolutionDepthWise",
    "Deconvolution1D",
    "Convolution1D",
    "ConvolutionDepthWise1D",
    "Convolution3D",
    "LSTM",
    "GRU",
    "RNN",
)


def float_layers_note(g: NcnnGraph) -> str | None:
    """A warning naming the heavy weighted layers an INT8 build leaves in FP32."""
    counts: dict[str, int] = {}
    for layer in g.layers:
        if layer.type in _FLOAT_HEAVY or (layer.type in ("Gemm", "MultiHeadAttention") and not layer.params.get(18)):
            counts[layer.type] = counts.get(layer.type, 0) + 1
    if not counts:
        return None
    listed = ", ".join(f"{t} x{n}" for t, n in sorted(counts.items()))
    return (
        f"INT8: {sum(counts.values())} weighted layer(s) stay FP32 ({listed}); ncnn INT8 here covers "
        f"{', '.join(QUANTIZABLE)}, MultiHeadAttention and Gemm with constant weights, so expect less "
        "speed-up than on a CNN"
    )


_BINS = 2048
_LEVELS = 128


def to_fp16(g: NcnnGraph, scratch=None) -> None:
    """Store every tagged weight as fp16 (values beyond ±65504 saturate).

    With a :class:`~mconv.targets.ncnn.fold.Scratch` (large models), large
    results are moved there as they are made instead of staying in memory.
    """
    from mconv.targets.ncnn.fold import LAZY_BYTES
    from mconv.targets.ncnn.ir import drop_pages

    fmax = float(np.finfo(np.float16).max)
    for layer in g.layers:
        for w in layer.weights:
            if w.tagged and w.kind == "fp32":
                old = w.data
                w.data = np.clip(old, -fmax, fmax).astype(np.float16)
                w.kind = "fp16"
                drop_pages(old)
                del old
                if scratch is not None and w.data.nbytes >= LAZY_BYTES:
                    scratch.park(w)
    if scratch is not None:
        scratch.restore()


def kl_threshold(hist: np.ndarray, bin_width: float) -> float:
    """The |x| threshold whose 128-level quantization loses least information.

    ``hist`` is a histogram of |x| over ``[0, len(hist) * bin_width)``. For each
    candidate threshold t (in bins) the reference distribution P is the first
    t bins with the clipped tail added to the last one; Q merges the same t bins
    (without the tail) into 128 levels and spreads each level evenly over its
    non-empty bins.
    """
    hist = hist.astype(np.float64)
    n = len(hist)
    if hist.sum() == 0:
        return n * bin_width
    tails = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])
    best_t, best_kl = n, np.inf
    for t in range(_LEVELS, n + 1):
        p = hist[:t].copy()
        p[t - 1] += tails[t]
        level = np.arange(t) * _LEVELS // t
        # Q is built from the bins without the clipped tail, so clipping
        # costs something (otherwise t=128 would always be a perfect fit).
        sliced = hist[:t]
        nz = sliced != 0
        sums = np.bincount(level, weights=sliced, minlength=_LEVELS)
        cnt = np.bincount(level, weights=nz, minlength=_LEVELS)
        q = np.where(nz, sums[level] / np.maximum(cnt[level], 1), 0.0)
        pn = p / p.sum()
        qn = q / q.sum()
        m = pn > 0
        kl = float(np.sum(pn[m] * np.log(pn[m] / np.maximum(qn[m], 1e-12))))
        if kl < best_kl:
            best_kl, best_t = kl, t
    return (best_t + 0.5) * bin_width


def _weight_scales(layer: Layer) -> np.ndarray:
    w = layer.weights[0].data.astype(np.float32)
    if layer.type == "ConvolutionDepthWise":
        groups = int(layer.params[7])
        per = w.reshape(groups, -1)
    else:
        per = w.reshape(int(layer.params[0]), -1)
    amax = np.abs(per).max(axis=1)
    return np.where(amax > 0, 127.0 / np.maximum(amax, 1e-30), 1.0).astype(np.float32)


def _collect(g: NcnnGraph, blobs: list[str], calib: list[dict], meta: dict) -> dict[str, list]:
    """Run the FP32 graph on the calibration samples; return blob -> arrays."""
    from mconv.targets.base import Artifact
    from mconv.targets.ncnn.runner import NcnnRunner

    with tempfile.TemporaryDirectory(prefix="mconv-calib-") as tmp:
        p = Path(tmp) / "calib.param"
        p.write_text(g.to_param())
        with open(p.with_suffix(".bin"), "wb") as f:
            g.write_bin(f)
        outs = [{"name": b, "blob": b} for b in blobs]
        art = Artifact("ncnn", p, [p], "fp32", {"inputs": meta["inputs"], "outputs": outs})
        runner = NcnnRunner(art, keep_intermediates=True)
        runner.load()
        values: dict[str, list] = {b: [] for b in blobs}
        for sample in calib:
            res = runner.infer(sample)
            for b in blobs:
                values[b].append(np.abs(np.asarray(res[b], np.float32)).ravel())
    return values


def activation_scales(values: dict[str, list], method: str) -> dict[str, float]:
    scales = {}
    for blob, arrs in values.items():
        x = np.concatenate(arrs) if arrs else np.zeros(1, np.float32)
        amax = float(x.max()) if x.size else 0.0
        if amax == 0:
            scales[blob] = 1.0
            continue
        if method == "minmax":
            t = amax
        else:
            width = amax / _BINS
            hist, _ = np.histogram(x, bins=_BINS, range=(0, amax))
            t = kl_threshold(hist, width)
        scales[blob] = 127.0 / t
    return scales


def quantize_int8(lowered, model: onnx.ModelProto, options: BuildOptions) -> str:
    """Quantize ``lowered.graph`` in place; return the calibration table text.

    Raises:
        UsageError: no calibration samples were given.
    """
    if not options.calib:
        raise UsageError("--int8 needs calibration data: pass --calib FOLDER_OR_GLOB")
    method = str(getattr(options.target, "calib_method", "kl")).lower()
    if method not in ("kl", "minmax"):
        raise UsageError(f"--calib-method '{method}': choose kl or minmax")
    ignore = set(getattr(options.target, "ignore", ()))
    g = lowered.graph
    targets = [
        layer
        for layer in g.layers
        if layer.type in QUANTIZABLE
        and layer.name not in ignore
        and layer.type not in ignore
        and layer.onnx_node not in ignore
    ]
    blobs = sorted({layer.inputs[0] for layer in targets})
    values = _collect(g, blobs, options.calib, lowered.meta)
    act = activation_scales(values, method)
    weight_lines, act_lines = [], []
    for layer in targets:
        ws = _weight_scales(layer)
        weight_lines.append(f"{layer.name}_param_0 " + " ".join(f"{v:g}" for v in ws))
        act_lines.append(f"{layer.name} {act[layer.inputs[0]]:g}")
        _apply(layer, ws, act[layer.inputs[0]])
    for layer in g.layers:
        if {layer.name, layer.type, layer.onnx_node} & ignore or layer.params.get(18):
            continue
        if _gemm_int8_able(layer):
            _apply_gemm(layer)  # weight-only: ncnn2table has no entry for Gemm
        elif layer.type == "MultiHeadAttention":
            for i, scales in enumerate(_apply_mha(layer)):  # q, k, v, out: as ncnn2table writes them
                weight_lines.append(f"{layer.name}_param_{i} " + " ".join(f"{v:g}" for v in scales))
    return "\n".join(weight_lines + act_lines) + "\n"


def _int8(w: np.ndarray, scale: np.ndarray | float) -> Weight:
    q = np.clip(np.round(w * scale), -127, 127).astype(np.int8).ravel()
    return Weight(q, tagged=True, kind="int8")


def _scale(absmax: np.ndarray) -> np.ndarray:
    return np.where(absmax > 0, 127.0 / np.where(absmax > 0, absmax, 1.0), 1.0).astype(np.float32)


def _apply_mha(layer: Layer) -> list[np.ndarray]:
    """ncnn's MultiHeadAttention INT8 (quantize_term 2): q/k/v projections as int8
    with one scale per output row, the output projection with one scale; the
    inputs are quantized at run time. Weights stay in their order (q, k, v, out with
    their biases); the scales follow them, raw. Returns the four scale arrays."""
    embed = int(layer.params[0])
    row_scales = []
    for i in (0, 2, 4):
        w = layer.weights[i].data.astype(np.float32).reshape(embed, -1)
        s = _scale(np.abs(w).max(axis=1))
        layer.weights[i] = _int8(w, s[:, None])
        row_scales.append(s)
    wo = layer.weights[6].data.astype(np.float32)
    so = _scale(np.array([np.abs(wo).max() if wo.size else 0.0]))
    layer.weights[6] = _int8(wo, so[0])
    layer.weights += [Weight(s, tagged=False) for s in row_scales] + [Weight(so, tagged=False)]
    layer.params[18] = 2
    return [*row_scales, so]


def _gemm_int8_able(layer: Layer) -> bool:
    """A Gemm with a constant B stored [N, K] (what the lowering writes for rows that
    InnerProduct would run unpacked) and a dynamic A."""
    p = layer.params
    return layer.type == "Gemm" and p.get(5) == 1 and p.get(3) == 1 and not p.get(4)


def _apply_gemm(layer: Layer) -> None:
    """ncnn's Gemm INT8 (quantize_term 2): B as int8 with one scale for the whole
    matrix (127/absmax, stored raw after the weights); ncnn quantizes the rows of A
    at run time, so no activation statistics are needed."""
    w = layer.weights[0].data.astype(np.float32)
    scale = _scale(np.array([np.abs(w).max() if w.size else 0.0]))
    layer.weights[0] = _int8(w, scale[0])
    layer.weights.append(Weight(scale, tagged=False))
    layer.params[18] = 2


def _apply(layer: Layer, wscales: np.ndarray, in_scale: float) -> None:
    w = layer.weights[0].data.astype(np.float32)
    per = w.reshape(len(wscales), -1)
    q = np.clip(np.round(per * wscales[:, None]), -127, 127).astype(np.int8).ravel()
    layer.weights[0] = Weight(q, tagged=True, kind="int8")
    layer.weights.append(Weight(wscales.astype(np.float32), tagged=False))
    layer.weights.append(Weight(np.array([in_scale], np.float32), tagged=False))
    layer.params[8] = 1 if layer.type == "ConvolutionDepthWise" else 2
