"""Recurrent layers: LSTM, GRU, RNN (ONNX layout 0 or 1, batch 1).

Cases:
    LSTM -> LSTM: ONNX gates (i, o, f, c) reordered to ncnn's (I, F, O, G); the
    two biases summed; forward / reverse / bidirectional (``2=direction``).
    GRU (linear_before_reset=1, PyTorch's form) -> GRU: gates (z, r, h) ->
    (R, U, N); bias rows R = Wbr+Rbr, U = Wbz+Rbz, WN = Wbn, BN = Rbn.
    RNN with tanh -> RNN. Initial states (inputs 5/6 or 5) become extra
    bottoms; Y_h / Y_c are extra tops. Refused: sequence_lens, peepholes,
    non-default activations, clip, input_forget, hidden_size mismatch.
    ncnn takes X as a (T, input) Mat and returns Y as (T, dirs*hidden), which
    is ONNX's Y [T, dirs, 1, hidden] in the same order.
"""

from __future__ import annotations

import numpy as np

from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import Ctx, Node, NotLowerable
from mconv.targets.ncnn.registry import rule

_DIRECTIONS = {"forward": 0, "reverse": 1, "bidirectional": 2}


def _common(ctx: Ctx, node: Node, gates: int, default_acts: list[str]):
    x = node.inputs[0]
    assert x is not None
    w = np.asarray(node.const(1, "W"), np.float32)
    r = np.asarray(node.const(2, "R"), np.float32)
    b = node.const(3, "B")
    if node.inp(4) is not None:
        raise NotLowerable("sequence_lens")
    if node.attr("clip") is not None:
        raise NotLowerable("clip")
    acts = node.attr("activations")
    if acts is not None:
        acts = [a.decode() if isinstance(a, bytes) else a for a in acts]
        if [a.lower() for a in acts] != [a.lower() for a in default_acts * (len(acts) // len(default_acts))]:
            raise NotLowerable(f"activations {acts}")
    direction = _DIRECTIONS[node.attr("direction", "forward")]
    dirs = w.shape[0]
    hidden = r.shape[-1]
    layout = int(node.attr("layout", 0))
    t_axis, b_axis = (1, 0) if layout else (0, 1)
    if x.shape[b_axis] != 1:
        raise ctx.fail(f"batch {x.shape[b_axis]} not representable (ncnn RNNs run batch 1)")
    seq, isize = x.shape[t_axis], x.shape[2]
    b = np.zeros((dirs, 2 * gates * hidden), np.float32) if b is None else np.asarray(b, np.float32)
    xb = ctx.reshape(ctx.blob_as(x), (seq, isize), name_hint=x.name)
    return x, w, r, b, direction, dirs, hidden, layout, seq, xb


def _emit(ctx: Ctx, node: Node, type_: str, xb: str, states: list, params: dict, weights,
          seq: int, dirs: int, hidden: int, layout: int) -> None:  # fmt: skip
    bottoms = [xb]
    for i in states:
        s = node.inp(i)
        if s is not None:
            bottoms.append(ctx.reshape(ctx.blob_as(s), (dirs, hidden), name_hint=s.name))
    if len(bottoms) not in (1, 1 + len(states)):
        raise NotLowerable("only some initial states given")
    n_extra = len(states)
    wanted = [o for o in node.outputs[1:] if o]
    tops = 1 + (n_extra if wanted else 0)
    shapes = [(seq, dirs * hidden)] + [(dirs, hidden)] * (tops - 1)
    outs = ctx.layer(type_, bottoms, shapes, params, weights)
    y = node.outputs[0] if node.outputs else ""
    if y:
        yshape = ctx.shape(y)
        keep = tuple(a for a in range(4) if a != (0 if layout else 2))
        ctx.bind(y, outs[0], keep if yshape[0 if layout else 2] == 1 else tuple(range(4)))
    for k, o in enumerate(node.outputs[1:]):
        if o:
            bshape = ctx.shape(o)
            keep = (1, 2) if layout else (0, 2)
            ctx.bind(o, outs[1 + k], keep if len(bshape) == 3 else tuple(range(len(bshape))))


@rule("LSTM")
def lstm(ctx: Ctx, node: Node) -> None:
    if node.inp(7) is not None:
        raise NotLowerable("peepholes")
    if int(node.attr("input_forget", 0)):
        raise NotLowerable("input_forget")
    _x, w, r, b, direction, dirs, hidden, layout, seq, xb = _common(ctx, node, 4, ["Sigmoid", "Tanh", "Tanh"])
    order = [0, 2, 1, 3]  # ONNX i,o,f,c -> ncnn I,F,O,G

    def re(a: np.ndarray) -> np.ndarray:
        return a.reshape(dirs, 4, hidden, -1)[:, order].reshape(dirs, 4 * hidden, -1)

    bias = (b[:, : 4 * hidden] + b[:, 4 * hidden :]).reshape(dirs, 4, hidden)[:, order]
    weights = [
        Weight(np.ascontiguousarray(re(w)).ravel(), tagged=True),
        Weight(np.ascontiguousarray(bias).ravel(), tagged=True),
        Weight(np.ascontiguousarray(re(r)).ravel(), tagged=True),
    ]
    params = {0: hidden, 1: int(w.size), 2: direction}
    _emit(ctx, node, "LSTM", xb, [5, 6], params, weights, seq, dirs, hidden, layout)


@rule("GRU")
def gru(ctx: Ctx, node: Node) -> None:
    if int(node.attr("linear_before_reset", 0)) != 1:
        raise NotLowerable("linear_before_reset=0 (ncnn implements PyTorch's GRU)")
    _x, w, r, b, direction, dirs, hidden, layout, seq, xb = _common(ctx, node, 3, ["Sigmoid", "Tanh"])
    order = [1, 0, 2]  # ONNX z,r,h -> ncnn R,U,N

    def re(a: np.ndarray) -> np.ndarray:
        return a.reshape(dirs, 3, hidden, -1)[:, order].reshape(dirs, 3 * hidden, -1)

    wb = b[:, : 3 * hidden].reshape(dirs, 3, hidden)
    rb = b[:, 3 * hidden :].reshape(dirs, 3, hidden)
    bias = np.stack([wb[:, 1] + rb[:, 1], wb[:, 0] + rb[:, 0], wb[:, 2], rb[:, 2]], axis=1)
    weights = [
        Weight(np.ascontiguousarray(re(w)).ravel(), tagged=True),
        Weight(np.ascontiguousarray(bias).ravel(), tagged=True),
        Weight(np.ascontiguousarray(re(r)).ravel(), tagged=True),
    ]
    params = {0: hidden, 1: int(w.size), 2: direction}
    _emit(ctx, node, "GRU", xb, [5], params, weights, seq, dirs, hidden, layout)


@rule("RNN")
def rnn(ctx: Ctx, node: Node) -> None:
    _x, w, r, b, direction, dirs, hidden, layout, seq, xb = _common(ctx, node, 1, ["Tanh"])
    bias = b[:, :hidden] + b[:, hidden:]
    weights = [
        Weight(np.ascontiguousarray(w).ravel(), tagged=True),
        Weight(np.ascontiguousarray(bias).ravel(), tagged=True),
        Weight(np.ascontiguousarray(r).ravel(), tagged=True),
    ]
    params = {0: hidden, 1: int(w.size), 2: direction}
    _emit(ctx, node, "RNN", xb, [5], params, weights, seq, dirs, hidden, layout)
