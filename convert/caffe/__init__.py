"""Caffe -> ONNX with an own reader: a ``.prototxt`` (the net) and a ``.caffemodel`` (its weights).

API (used by the source registry):

- :func:`detect` — is this file a Caffe prototxt or caffemodel (by content, cheap);
- :func:`find_pair` — the (prototxt, caffemodel) pair from either half and ``--weights``;
- :func:`to_onnx` — the ONNX model, after refusing every unsupported layer at once;
- :func:`run_reference` — a numpy forward pass of the Caffe net (the framework-side reference
  for verification: Caffe itself does not install here).

Only :mod:`pathlib` is imported here; protobuf, numpy and onnx are imported by the functions
that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mconv.convert.caffe.files import detect, find_pair, is_caffemodel, is_prototxt

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import onnx

__all__ = ["detect", "find_pair", "is_caffemodel", "is_prototxt", "run_reference", "to_onnx"]

DEFAULT_OPSET = 17


def _read(prototxt: Path, caffemodel: Path):
    from mconv.convert.caffe.layers import check_supported
    from mconv.convert.caffe.netdef import attach_weights, read_prototxt
    from mconv.errors import InputError

    net = read_prototxt(prototxt)
    check_supported(prototxt, net.layers)
    if not net.inputs:
        raise InputError(f"{prototxt}: declares no input: add an Input layer (input_param {{ shape {{ dim: ... }} }}) "
                         "or net-level input: with input_shape")  # fmt: skip
    return attach_weights(net, caffemodel)


def to_onnx(prototxt: Path, caffemodel: Path, *, opset: int | None = DEFAULT_OPSET) -> onnx.ModelProto:
    """The ONNX model of the net (float32, static input shapes from the prototxt); ``opset``
    13 or newer (None: the default, 17).

    Raises:
        UnsupportedOpsError: (a ``layers.UnsupportedLayersError``) listing every layer type that
            cannot be converted, with the layer names and why, before anything is built.
        InputError: a malformed prototxt or caffemodel, or weights that do not fit the net.
    """
    from mconv.convert.caffe.export import build

    return build(_read(prototxt, caffemodel), DEFAULT_OPSET if opset is None else opset)


def run_reference(prototxt: Path, caffemodel: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The net's outputs (by blob name, Caffe's rule: tops no later layer reads) on ``feeds``."""
    from mconv.convert.caffe.reference import forward

    return forward(_read(prototxt, caffemodel), feeds)
