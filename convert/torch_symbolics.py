"""ONNX symbolic functions for PyTorch's fused transformer fast-path ops.

TorchScript archives traced from transformer models in inference mode contain
``aten::_native_multi_head_attention`` and ``aten::_transformer_encoder_layer_fwd``,
which torch's TorchScript-based ONNX exporter refuses. These functions decompose
them into standard ONNX ops (opset >= 13; LayerNormalization needs 17):
MatMul/Add projections, Reshape+Transpose into heads, scaled MatMul, Softmax,
an additive mask, and (for the encoder layer) LayerNormalization and the FFN.
"""

from __future__ import annotations

import math

import torch
from torch.onnx import symbolic_helper as sh

_REGISTERED = False


def _const(g, value, dtype=torch.int64):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _opset() -> int:
    return sh.GLOBALS.export_onnx_opset_version


def _linear(g, x, w, b):
    y = g.op("MatMul", x, g.op("Transpose", w, perm_i=[1, 0]))
    return y if sh._is_none(b) else g.op("Add", y, b)


def _split_equal(g, t, axis):
    if _opset() >= 18:
        return g.op("Split", t, axis_i=axis, num_outputs_i=3, outputs=3)
    # Opset 13-17: equal split when the 'split' input is omitted.
    return g.op("Split", t, axis_i=axis, outputs=3)


def _heads(g, t, num_heads, head_dim, perm):
    t = g.op("Reshape", t, _const(g, [0, -1, num_heads, head_dim]))
    return g.op("Transpose", t, perm_i=perm)


def _additive_mask(g, mask, mask_type):
    """Bool masks (True = masked) become 0/-inf; shapes are lifted to (B|1, H|1, L, S)."""
    if sh._is_none(mask):
        return None
    if mask.type().scalarType() == "Bool":
        neg = g.op("Constant", value_t=torch.tensor(float("-inf"), dtype=torch.float32))
        zero = g.op("Constant", value_t=torch.tensor(0.0, dtype=torch.float32))
        mask = g.op("Where", mask, neg, zero)
    rank = mask.type().dim()
    if mask_type == 1:
        return g.op("Unsqueeze", mask, _const(g, [1, 2]))  # (B, S) -> (B, 1, 1, S)
    if rank == 2:
        return g.op("Unsqueeze", mask, _const(g, [0, 1]))  # (L, S) -> (1, 1, L, S)
    if rank == 3:
        return g.op("Unsqueeze", mask, _const(g, [1]))
    return mask


def _attention(g, q, k, v, embed_dim, num_heads, proj_w, proj_b, mask, mask_type):
    """Returns (output (B, L, E), probabilities (B, H, L, S))."""
    head_dim = embed_dim // num_heads
    qh = _heads(g, q, num_heads, head_dim, [0, 2, 1, 3])
    kh = _heads(g, k, num_heads, head_dim, [0, 2, 3, 1])
    vh = _heads(g, v, num_heads, head_dim, [0, 2, 1, 3])
    scale = g.op("Constant", value_t=torch.tensor(1.0 / math.sqrt(head_dim), dtype=torch.float32))
    scores = g.op("Mul", g.op("MatMul", qh, kh), scale)
    add = _additive_mask(g, mask, mask_type)
    if add is not None:
        scores = g.op("Add", scores, add)
    probs = g.op("Softmax", scores, axis_i=-1)
    ctx = g.op("Transpose", g.op("MatMul", probs, vh), perm_i=[0, 2, 1, 3])
    ctx = g.op("Reshape", ctx, _const(g, [0, -1, embed_dim]))
    return _linear(g, ctx, proj_w, proj_b), probs


def _mean_heads(g, probs):
    if _opset() >= 18:
        return g.op("ReduceMean", probs, _const(g, [1]), keepdims_i=0)
    return g.op("ReduceMean", probs, axes_i=[1], keepdims_i=0)


@sh.parse_args("v", "v", "v", "i", "i", "v", "v", "v", "v", "v", "b", "b", "v")
def native_multi_head_attention(
    g,
    query,
    key,
    value,
    embed_dim,
    num_head,
    qkv_weight,
    qkv_bias,
    proj_weight,
    proj_bias,
    mask,
    need_weights,
    average_attn_weights,
    mask_type,
):
    mask_type = None if sh._is_none(mask_type) else sh._get_const(mask_type, "i", "mask_type")
    wq, wk, wv = _split_equal(g, qkv_weight, 0)
    bq, bk, bv = _split_equal(g, qkv_bias, 0)
    q = _linear(g, query, wq, bq)
    k = _linear(g, key, wk, bk)
    v = _linear(g, value, wv, bv)
    out, probs = _attention(g, q, k, v, embed_dim, num_head, proj_weight, proj_bias, mask, mask_type)
    weights = _mean_heads(g, probs) if average_attn_weights else probs
    return out, weights


def _layer_norm(g, x, w, b, eps):
    if _opset() < 17:
        raise torch.onnx.errors.SymbolicValueError(
            "decomposing the transformer fast path needs --opset 17 or newer (LayerNormalization)", x
        )
    return g.op("LayerNormalization", x, w, b, axis_i=-1, epsilon_f=eps)


def _gelu(g, x):
    half = g.op("Constant", value_t=torch.tensor(0.5, dtype=torch.float32))
    one = g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32))
    rsqrt2 = g.op("Constant", value_t=torch.tensor(1.0 / math.sqrt(2.0), dtype=torch.float32))
    erf = g.op("Erf", g.op("Mul", x, rsqrt2))
    return g.op("Mul", g.op("Mul", x, half), g.op("Add", erf, one))


@sh.parse_args("v", "i", "i", "v", "v", "v", "v", "b", "b", "f", "v", "v", "v", "v", "v", "v", "v", "v", "v", "v")
def transformer_encoder_layer_fwd(
    g,
    src,
    embed_dim,
    num_heads,
    qkv_weight,
    qkv_bias,
    proj_weight,
    proj_bias,
    use_gelu,
    norm_first,
    eps,
    norm_weight_1,
    norm_bias_1,
    norm_weight_2,
    norm_bias_2,
    ffn_weight_1,
    ffn_bias_1,
    ffn_weight_2,
    ffn_bias_2,
    mask,
    mask_type,
):
    mask_type = None if sh._is_none(mask_type) else sh._get_const(mask_type, "i", "mask_type")

    def self_attention(x):
        q, k, v = _split_equal(g, _linear(g, x, qkv_weight, qkv_bias), -1)
        return _attention(g, q, k, v, embed_dim, num_heads, proj_weight, proj_bias, mask, mask_type)[0]

    def ffn(x):
        h = _linear(g, x, ffn_weight_1, ffn_bias_1)
        h = _gelu(g, h) if use_gelu else g.op("Relu", h)
        return _linear(g, h, ffn_weight_2, ffn_bias_2)

    x = src
    if norm_first:
        x = g.op("Add", x, self_attention(_layer_norm(g, x, norm_weight_1, norm_bias_1, eps)))
        x = g.op("Add", x, ffn(_layer_norm(g, x, norm_weight_2, norm_bias_2, eps)))
    else:
        x = _layer_norm(g, g.op("Add", x, self_attention(x)), norm_weight_1, norm_bias_1, eps)
        x = _layer_norm(g, g.op("Add", x, ffn(x)), norm_weight_2, norm_bias_2, eps)
    return x


def register() -> None:
    """Register the symbolics for opsets 13-25 (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    for v in range(13, 26):
        torch.onnx.register_custom_op_symbolic("aten::_native_multi_head_attention", native_multi_head_attention, v)
        torch.onnx.register_custom_op_symbolic("aten::_transformer_encoder_layer_fwd", transformer_encoder_layer_fwd, v)
    _REGISTERED = True
