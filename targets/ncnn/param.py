"""Reading ncnn ``.param`` text: the one parser of the format in mconv (the writer is ir.py).

A ``.param`` is a magic line (7767517), a line with the layer and blob counts, then
one line per layer: ``Type name n_in n_out in... out... key=value...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mconv.graphinfo import TensorInfo


@dataclass
class ParamLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str] = field(default_factory=dict)  # key (text) -> value (text)


def read_param(text: str) -> list[ParamLayer]:
    """The layers of a ``.param`` file's text, in file order (malformed lines are skipped)."""
    layers = []
    for line in text.splitlines()[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
        except ValueError:
            continue
        ins = parts[4 : 4 + n_in]
        outs = parts[4 + n_in : 4 + n_in + n_out]
        kv = dict(p.split("=", 1) for p in parts[4 + n_in + n_out :] if "=" in p)
        layers.append(ParamLayer(parts[0], parts[1], ins, outs, kv))
    return layers


def param_io(text: str) -> tuple[list[str], list[str]]:
    """(input blobs, output blobs) of a .param: Input layers' blobs; blobs no layer reads."""
    produced: list[str] = []
    consumed: set[str] = set()
    inputs: list[str] = []
    for layer in read_param(text):
        consumed.update(layer.inputs)
        produced.extend(layer.outputs)
        if layer.type == "Input":
            inputs.extend(layer.outputs)
    outputs = [b for b in produced if b not in consumed and b not in inputs]
    return inputs, outputs


def param_inputs(text: str) -> list[TensorInfo]:
    """The Input layers as tensors: blob name, shape (1, c, d, h, w as given; None where the
    layer gives none, as pnnx writes them), float32."""
    out = []
    for layer in read_param(text):
        if layer.type != "Input" or not layer.outputs:
            continue
        nc = [int(layer.params[k]) for k in ("2", "11", "1", "0") if k in layer.params]  # c, d, h, w
        out.append(TensorInfo(layer.outputs[0], (1, *nc) if nc else None, "float32"))
    return out
