"""Reading a Caffe net: the prototxt (structure) and the ``.caffemodel`` (weights, by layer name).

The prototxt is split into its top-level ``layer {}``/``layers {}`` blocks first, so that each
layer is parsed on its own: a layer type the reader does not support may carry parameters of
a fork's schema (it is reported as unsupported, not as a parse error), while an unknown field
in a supported layer is an error naming the field and its line (silently ignoring it could
change what the layer computes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import message as pb_message
from google.protobuf import text_format

from mconv.convert.caffe import layers as layer_table
from mconv.convert.caffe.schema import messages, v1_type_names
from mconv.errors import InputError

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}<>]|[A-Za-z_][\w.]*|\S')
_TEST = 1  # Phase.TEST


@dataclass
class Layer:
    """One layer of the net in deploy (TEST) phase, with its weights."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: Any  # the LayerParameter / V1LayerParameter message
    line: int
    blobs: list[np.ndarray] = field(default_factory=list)
    blob_shapes: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class Net:
    prototxt: Path
    caffemodel: Path | None
    name: str
    inputs: dict[str, tuple[int, ...]]
    layers: list[Layer]

    def outputs(self) -> list[str]:
        """Caffe's rule: the blobs still available after the last layer (produced, never consumed after)."""
        available: dict[str, None] = {}
        for layer in self.layers:
            for b in layer.bottoms:
                available.pop(b, None)
            for t in layer.tops:
                available[t] = None
        return list(available)


def _blocks(text: str) -> tuple[list[tuple[str, int, str]], str]:
    """Top-level ``layer``/``layers`` blocks as (kind, first line, inner text), and the rest of
    the file with the blocks blanked (line numbers kept)."""
    blocks: list[tuple[str, int, str]] = []
    rest = list(text)
    depth, pending, start, open_at = 0, None, 0, 0
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok[0] in "#\"'":
            continue
        if tok in "{<":
            if depth == 0 and pending is not None:
                start, open_at = pending[1], m.end()
            depth += 1
        elif tok in "}>":
            depth -= 1
            if depth == 0 and pending is not None:
                inner = text[open_at : m.start()]
                blocks.append((pending[0], text.count("\n", 0, open_at) + 1, inner))
                for i in range(start, m.end()):
                    rest[i] = rest[i] if rest[i] == "\n" else " "
                pending = None
            if depth < 0:
                raise ValueError(f"line {text.count(chr(10), 0, m.start()) + 1}: unbalanced '{tok}'")
        elif depth == 0 and tok != ":":
            pending = (tok, m.start()) if tok in ("layer", "layers") else None
    if depth != 0:
        raise ValueError("unbalanced braces: the file ends inside a block")
    return blocks, "".join(rest)


def _parse(text: str, cls: Any, path: Path, first_line: int, strict: bool) -> Any:
    msg = cls()
    try:
        text_format.Parse(text, msg, allow_unknown_field=not strict)
    except text_format.ParseError as e:
        line = first_line + max(e.GetLine(), 1) - 1 if e.GetLine() else first_line
        detail = re.sub(r"^\d+:\d+ : ", "", str(e))
        raise InputError(f"{path}:{line}: {detail}") from e
    return msg


def _type_name(kind: str, msg: Any) -> str:
    if kind == "layer":
        return msg.type
    return layer_table.V1_TYPES.get(v1_type_names().get(msg.type, ""), str(msg.type))


def _in_test_phase(msg: Any) -> bool:
    def matches(rule: Any) -> bool:
        if rule.HasField("phase") and rule.phase != _TEST:
            return False
        if rule.stage or (rule.HasField("min_level") and rule.min_level > 0):
            return False
        return not (rule.HasField("max_level") and rule.max_level < 0)

    if len(msg.include):
        return any(matches(r) for r in msg.include)
    return not any(matches(r) for r in msg.exclude)


def _layer(kind: str, line: int, inner: str, path: Path) -> Layer | None:
    cls = messages()["LayerParameter" if kind == "layer" else "V1LayerParameter"]
    msg = _parse(inner, cls, path, line, strict=False)
    type_name = _type_name(kind, msg)
    if type_name in layer_table.SUPPORTED:
        try:
            msg = _parse(inner, cls, path, line, strict=True)
        except InputError as e:
            raise InputError(
                f"{e.message} (layer '{msg.name}', {type_name}: the reader does not know this field and cannot "
                "tell whether it changes the layer's output; remove it from the prototxt if it does not)"
            ) from e
    if not _in_test_phase(msg):
        return None
    return Layer(msg.name or f"{type_name}_{line}", type_name, list(msg.bottom), list(msg.top), msg, line)


def _legacy_inputs(net: Any, path: Path) -> dict[str, tuple[int, ...]]:
    """The deprecated net-level ``input:`` with ``input_shape {}`` or four ``input_dim`` each."""
    names = list(net.input)
    if not names:
        return {}
    if len(net.input_shape) == len(names):
        return {n: tuple(int(d) for d in s.dim) for n, s in zip(names, net.input_shape)}
    if len(net.input_dim) == 4 * len(names):
        dims = [int(d) for d in net.input_dim]
        return {n: tuple(dims[4 * i : 4 * i + 4]) for i, n in enumerate(names)}
    raise InputError(
        f"{path}: {len(names)} net input(s) ({', '.join(names)}) need one input_shape {{}} or four input_dim "
        f"each (found {len(net.input_shape)} input_shape, {len(net.input_dim)} input_dim)"
    )


def read_prototxt(path: Path) -> Net:
    """Parse the net description; the layers carry no weights yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the prototxt as text ({e})") from e
    try:
        blocks, rest = _blocks(text)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from e
    net_msg = _parse(rest, messages()["NetParameter"], path, 1, strict=False)
    layers = [lay for kind, line, inner in blocks if (lay := _layer(kind, line, inner, path)) is not None]
    if not layers:
        raise InputError(f"{path}: no layer {{}} or layers {{}} blocks: not a Caffe net description")
    kinds = {kind for kind, _, _ in blocks}
    if len(kinds) > 1:
        raise InputError(f"{path}: mixes new-style 'layer {{}}' and V1 'layers {{}}' blocks; use one kind")
    inputs = _legacy_inputs(net_msg, path)
    for layer in layers:
        if layer.type == "Input":
            inputs.update(_input_layer_shapes(layer, path))
    return Net(path, None, net_msg.name, inputs, layers)


def _input_layer_shapes(layer: Layer, path: Path) -> dict[str, tuple[int, ...]]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    if len(shapes) == 1:
        shapes = shapes * len(layer.tops)
    if len(shapes) != len(layer.tops):
        raise InputError(
            f"{path}:{layer.line}: Input layer '{layer.name}' has {len(layer.tops)} top(s) but "
            f"{len(shapes)} shape(s); give one input_param shape {{}} per top"
        )
    return dict(zip(layer.tops, shapes))


def _blob_shape(blob: Any) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    # The deprecated 4-D fields, e.g. an InnerProduct weight as 1x1xOUTxIN.
    return tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))


def _blob_array(blob: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """A BlobProto (from the prototxt) as flat float32 data and its stored shape."""
    data = blob.data if len(blob.data) else blob.double_data
    return np.asarray(data, dtype=np.float32), _blob_shape(blob)


def _weights_blob(blob: Any, path: Path, layer: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """A WeightsBlob (raw packed data) as flat float32 data and its stored shape."""
    if len(blob.data) or len(blob.double_data):
        raw, dtype = (b"".join(blob.data), "<f4") if len(blob.data) else (b"".join(blob.double_data), "<f8")
        if len(raw) % np.dtype(dtype).itemsize:
            raise InputError(f"{path}: layer '{layer}' has a blob whose data is cut short: a damaged .caffemodel")
        return np.frombuffer(raw, dtype=dtype).astype(np.float32), _blob_shape(blob)
    # Unpacked floats (one field per value) do not fit the bytes field and stay unknown: read
    # this blob again with the float schema.
    full = messages()["BlobProto"].FromString(blob.SerializeToString())
    return _blob_array(full)


def read_caffemodel(path: Path) -> dict[str, list[tuple[np.ndarray, tuple[int, ...]]]]:
    """Layer name -> its blobs (flat data, stored shape)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the weights ({e})") from e
    msg = messages()["WeightsNet"]()
    try:
        msg.ParseFromString(raw)
    except pb_message.DecodeError as e:
        raise InputError(f"{path}: not a readable .caffemodel (a binary NetParameter): {e}") from e
    out: dict[str, list[tuple[np.ndarray, tuple[int, ...]]]] = {}
    for layer in [*msg.layer, *msg.layers]:
        if len(layer.blobs):
            out[layer.name] = [_weights_blob(b, path, layer.name) for b in layer.blobs]
    return out


def attach_weights(net: Net, caffemodel: Path) -> Net:
    """Give each layer its blobs, from the caffemodel by layer name (else from the prototxt)."""
    weights = read_caffemodel(caffemodel)
    net.caffemodel = caffemodel
    for layer in net.layers:
        stored = weights.get(layer.name) or [_blob_array(b) for b in layer.param.blobs]
        layer.blobs = [a for a, _ in stored]
        layer.blob_shapes = [s for _, s in stored]
    return net


def blob(net: Net, layer: Layer, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Blob ``index`` of ``layer`` in ``shape``; its stored size must match (stored shapes differ
    in legacy files, e.g. 1x1xOUTxIN for an InnerProduct weight, so only the count is checked)."""
    where = net.caffemodel or net.prototxt
    if index >= len(layer.blobs):
        raise InputError(
            f"{where}: layer '{layer.name}' ({layer.type}) has {len(layer.blobs)} weight blob(s), needs blob "
            f"{index} of shape {list(shape)}: the weights do not belong to this prototxt"
        )
    data = layer.blobs[index]
    if data.size != int(np.prod(shape)):
        raise InputError(
            f"{where}: layer '{layer.name}' ({layer.type}) blob {index} holds {data.size} values "
            f"(stored shape {list(layer.blob_shapes[index])}), the layer's shape {list(shape)} needs "
            f"{int(np.prod(shape))}: the weights do not belong to this prototxt"
        )
    return data.reshape(shape)
